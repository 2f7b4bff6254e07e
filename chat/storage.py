"""The stores uploads are kept in: Django's filesystem storage and django-storages' S3 storage,
less their URLs.

An upload reaches a browser only through /uploads/<id>/ (chat/uploads.py), which checks its owner
and sends the headers that keep it from running. A URL of the store's own (MEDIA_URL on disk, a
bucket's address, signed or not) would skip all of that, so none is ever made: asking for one is
a bug, and fails in the tests of either store.
"""

from django.core.files.storage import FileSystemStorage
from storages.backends.s3 import S3Storage


class NoURLs:
    def url(self, name, *args, **kwargs):
        raise NotImplementedError(
            "Uploads have no URL of their own: they are served by /uploads/<id>/, which checks their owner."
        )


class PrivateFileSystemStorage(NoURLs, FileSystemStorage):
    """Files under MEDIA_ROOT (the default)."""


class PrivateS3Storage(NoURLs, S3Storage):
    """Objects in a bucket of an S3-compatible store (CHAT_S3_BUCKET)."""
