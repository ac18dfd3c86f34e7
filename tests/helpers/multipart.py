"""Multipart bodies built by hand, byte for byte: tests need bodies no HTTP client would send
(odd file names, several `file` parts, cut-off bodies) and bodies fed to the parser directly."""

from __future__ import annotations

BOUNDARY = "XyZb0und"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(
    *parts: tuple[str, str | bytes, bytes], boundary: str = BOUNDARY
) -> tuple[bytes, str]:
    """The body and its Content-Type; each part is (field name, file name, bytes)."""
    body = b""
    for name, filename, data in parts:
        raw_name = filename if isinstance(filename, bytes) else filename.encode()
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '.encode()
            + b'filename="'
            + raw_name
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def with_text_fields(body: bytes, **fields: str) -> bytes:
    """`body` (from `multipart`, default boundary) with text fields before its file part."""
    text = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    )
    return text + body
