"""Source readers: local files, S3 (moto) and HTTP (a real local server), plus bad sources."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import boto3
import pytest

from producer.sources import SourceError, google_drive_download_url, open_source

CONTENT = b"step,customer\n" + b"".join(f"{i},'C{i}'\n".encode() for i in range(5000))


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, str, bytes]]] = {}

    def do_GET(self) -> None:
        status, content_type, body = self.routes.get(self.path, (404, "text/plain", b"nope"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    _Handler.routes = {
        "/data.csv": (200, "text/csv", CONTENT),
        "/page": (200, "text/html", b"<html>sign in</html>"),
        "/empty.csv": (200, "text/csv", b""),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def read_all(uri: str, s3=None) -> tuple[bytes, str]:
    with open_source(uri, s3) as source:
        return b"".join(source.lines()), source.fingerprint


def test_local_file_is_read_line_by_line_unchanged(tmp_path: Path):
    path = tmp_path / "t.csv"
    path.write_bytes(CONTENT)
    data, fingerprint = read_all(str(path))
    assert data == CONTENT
    assert fingerprint.endswith(f":size:{len(CONTENT)}")


def test_the_same_content_has_the_same_fingerprint_wherever_it_lives(
    tmp_path: Path, http_base: str, aws: None
):
    path = tmp_path / "t.csv"
    path.write_bytes(CONTENT)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="src")
    s3.put_object(Bucket="src", Key="in/t.csv", Body=CONTENT)
    local = read_all(str(path))
    assert read_all("s3://src/in/t.csv", s3) == local
    assert read_all(f"{http_base}/data.csv") == local
    other = tmp_path / "u.csv"
    other.write_bytes(CONTENT + b"5000,'C5000'\n")
    assert read_all(str(other))[1] != local[1]


def test_lines_longer_than_the_fingerprint_window_are_not_split(tmp_path: Path):
    content = b"h\n" + b"x" * (3 << 20) + b"\nlast\n"
    path = tmp_path / "big.csv"
    path.write_bytes(content)
    with open_source(str(path)) as source:
        assert [len(line) for line in source.lines()] == [2, (3 << 20) + 1, 5]


@pytest.mark.parametrize(
    ("share", "file_id"),
    [
        ("https://drive.google.com/file/d/1AbC-d_9/view?usp=sharing", "1AbC-d_9"),
        ("https://drive.google.com/open?id=1AbC-d_9", "1AbC-d_9"),
        ("https://drive.google.com/uc?id=1AbC-d_9&export=download", "1AbC-d_9"),
    ],
)
def test_google_drive_share_links_become_download_urls(share: str, file_id: str):
    assert google_drive_download_url(share) == (
        f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"
    )


def test_other_urls_are_left_alone():
    url = "https://example.com/file/d/123/transactions.csv"
    assert google_drive_download_url(url) == url


def test_missing_local_file_is_a_source_error_naming_it(tmp_path: Path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(SourceError, match=r"nope\.csv: file not found"):
        open_source(str(missing))


def test_empty_file_is_a_source_error(tmp_path: Path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match="file is empty"):
        open_source(str(path))


def test_directory_is_a_source_error(tmp_path: Path):
    with pytest.raises(SourceError, match=r"directory|cannot open"):
        open_source(str(tmp_path))


def test_http_404_names_url_and_status(http_base: str):
    with pytest.raises(SourceError, match=r"/missing.csv: HTTP 404"):
        open_source(f"{http_base}/missing.csv")


def test_http_html_page_is_refused(http_base: str):
    with pytest.raises(SourceError, match="HTML page"):
        open_source(f"{http_base}/page")


def test_empty_http_body_is_refused(http_base: str):
    with pytest.raises(SourceError, match="empty"):
        open_source(f"{http_base}/empty.csv")


def test_unreachable_url_is_a_source_error():
    with pytest.raises(SourceError, match="cannot open URL"):
        open_source("http://127.0.0.1:9/data.csv")


def test_missing_s3_object_is_a_source_error(aws: None):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="src")
    with pytest.raises(SourceError, match=r"s3://src/nope\.csv: cannot read S3 object \(NoSuchKey"):
        open_source("s3://src/nope.csv", s3)


def test_malformed_s3_uri_is_a_source_error():
    with pytest.raises(SourceError, match="not an s3://bucket/key URI"):
        open_source("s3://just-a-bucket")
