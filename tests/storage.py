"""Each test's own empty store for uploads, of the kind the run stores them in.

The first run of the suite stores uploads on the filesystem; the PostgreSQL and Redis run
(scripts/with-services.sh) in the bucket of a real S3-compatible server. `fresh_store` gives a test
a folder of its own in either: a MEDIA_ROOT of its own, or a prefix of its own in the bucket, so
what a test finds stored is what it stored. `s3_store` puts a test in a bucket whatever the run.
"""

import uuid

from django.core.files.storage import storages

from chatsite.settings import s3_storage

UPLOADS = "uploads"
S3_BACKEND = "chat.storage.PrivateS3Storage"


class Store:
    """The site's default storage as the test set it, looked at through the storage API."""

    @property
    def storage(self):
        return storages["default"]

    def names(self):
        """The storage names of the uploads stored, sorted."""
        try:
            _, files = self.storage.listdir(UPLOADS)
        except FileNotFoundError:  # the filesystem's folder is made with its first file
            return []
        return sorted(f"{UPLOADS}/{name}" for name in files)


class S3Store(Store):
    """A prefix of its own in the bucket of `server` (tests/services.py `S3Server`), and a client
    straight to the bucket to look past the storage API."""

    def __init__(self, server, prefix):
        self.server = server
        self.prefix = prefix
        self.client = server.client()

    def key(self, name):
        return f"{self.prefix}/{name}"

    def keys(self):
        """Every object's key under this store's prefix, as the bucket lists it."""
        listed = self.client.list_objects_v2(Bucket=self.server.bucket, Prefix=f"{self.prefix}/")
        return sorted(entry["Key"] for entry in listed.get("Contents", ()))


def fresh_store(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    default = settings.STORAGES["default"]
    if default["BACKEND"] == S3_BACKEND:
        options = {**default["OPTIONS"], "location": f"tests/{uuid.uuid4().hex}"}
        settings.STORAGES = {**settings.STORAGES, "default": {**default, "OPTIONS": options}}
    return Store()


def s3_store(settings, server):
    """Uploads stored in `server`'s bucket for this test, under a prefix of its own."""
    prefix = f"tests/{uuid.uuid4().hex}"
    storage = s3_storage(
        server.bucket,
        endpoint_url=server.endpoint_url,
        region=server.region,
        access_key=server.access_key_id,
        secret_key=server.secret_access_key,
        prefix=prefix,
    )
    settings.STORAGES = {**settings.STORAGES, "default": storage}
    return S3Store(server, prefix)
