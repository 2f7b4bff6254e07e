"""scripts/with-services.sh, the PostgreSQL and Redis run of `make test`: the command it runs
stores uploads in the bucket of a real S3-compatible server, which is gone once it exits."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.services import ROOT

pytestmark = pytest.mark.timeout(180)

# Run by the command: the site's settings as the services run makes them, one file stored through
# the storage API, and read back from the bucket with a client of its own.
PROBE = """
import json, os
import django
django.setup()
import boto3
from botocore.config import Config
from django.core.files.base import ContentFile
from django.core.files.storage import storages

storage = storages["default"]
name = storage.save("uploads/probe", ContentFile(b"in the bucket"))
client = boto3.client(
    "s3",
    endpoint_url=os.environ["CHAT_S3_ENDPOINT_URL"],
    region_name=os.environ["CHAT_S3_REGION"],
    aws_access_key_id=os.environ["CHAT_S3_ACCESS_KEY_ID"],
    aws_secret_access_key=os.environ["CHAT_S3_SECRET_ACCESS_KEY"],
    config=Config(proxies={}),
)
body = client.get_object(Bucket=os.environ["CHAT_S3_BUCKET"], Key=name)["Body"].read()
print(json.dumps({
    "backend": type(storage).__module__ + "." + type(storage).__name__,
    "body": body.decode(),
    "endpoint": os.environ["CHAT_S3_ENDPOINT_URL"],
    "database": os.environ["DATABASE_URL"].split(":", 1)[0],
}))
"""


def test_the_services_run_stores_uploads_in_a_bucket_it_stops_at_the_end():
    result = subprocess.run(
        ["bash", "scripts/with-services.sh", sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if not key.startswith("CHAT_S3_")}
        | {"DJANGO_SETTINGS_MODULE": "chatsite.settings"},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["backend"] == "chat.storage.PrivateS3Storage"
    assert found["body"] == "in the bucket"
    assert found["database"] == "postgres"
    assert "S3 bucket" in result.stderr
    port = int(found["endpoint"].rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # the store was stopped with the run
