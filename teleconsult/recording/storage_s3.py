"""An S3-compatible :class:`~teleconsult.recording.storage.BlobStore` over plain aiohttp.

Path-style requests (``{endpoint}/{bucket}/{key}``) signed with AWS Signature
Version 4, so it works with AWS S3, Ceph RGW, MinIO, Garage and the like. It
needs only PutObject, GetObject (with Range), HeadObject, DeleteObject and
ListObjectsV2 on the bucket. Objects hold sealed bytes only.

Writing stages the sealed object in a local file (``staging``, 0700; it never
holds plaintext) and uploads it with one PUT. A head rewrite (key rotation,
expiry) downloads the object into staging, patches it and uploads it again: S3
has no partial writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import aiohttp

from teleconsult.recording.storage import NoSuchObject, StorageError, check_name

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UPLOAD_BLOCK = 1 << 20


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_headers(
    *,
    method: str,
    url: str,
    region: str,
    access_key: str,
    secret_key: str,
    payload_sha256: str,
    now: dt.datetime,
    headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers that sign one request (AWS SigV4, service ``s3``); ``url`` is already
    percent-encoded. Pure, so a test can check it against AWS's published example."""
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    host = parts.netloc
    signed = {k.lower(): v.strip() for k, v in (headers or {}).items()}
    signed |= {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    names = sorted(signed)
    query = "&".join(
        sorted(
            f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
            for k, _, v in (pair.partition("=") for pair in parts.query.split("&") if pair)
        )
    )
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            query,
            "".join(f"{name}:{signed[name]}\n" for name in names),
            ";".join(names),
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _sign(
        _sign(_sign(_sign(("AWS4" + secret_key).encode(), day), region), "s3"), "aws4_request"
    )
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {k: v for k, v in signed.items() if k != "host"}
    out["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return out


class S3BlobStore:
    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        prefix: str = "",
        staging: Path,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._bucket = bucket
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._staging = staging
        staging.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
            )
        return self._session

    def _url(self, name: str = "", query: str = "") -> str:
        key = quote(self._prefix + check_name(name), safe="/-_.~") if name else ""
        path = f"/{quote(self._bucket, safe='-_.~')}/{key}" if name else f"/{self._bucket}"
        return f"{self._endpoint}{path}" + (f"?{query}" if query else "")

    def _headers(
        self, method: str, url: str, payload: str = _EMPTY_SHA256, **extra: str
    ) -> dict[str, str]:
        return sigv4_headers(
            method=method,
            url=url,
            region=self._region,
            access_key=self._access_key,
            secret_key=self._secret_key,
            payload_sha256=payload,
            now=dt.datetime.now(dt.UTC),
            headers=extra,
        )

    async def _check(self, resp: aiohttp.ClientResponse, what: str) -> None:
        if resp.status >= 300:
            body = (await resp.text())[:300]
            raise StorageError(f"S3 {what} answered {resp.status}: {body}")

    @contextlib.asynccontextmanager
    async def writer(self, name: str) -> AsyncIterator[BinaryIO]:
        check_name(name)
        tmp = self._staging / f"{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        handle = os.fdopen(fd, "w+b")
        try:
            yield handle
            handle.flush()
            await self._upload(name, tmp)
        finally:
            handle.close()
            tmp.unlink(missing_ok=True)

    async def _upload(self, name: str, path: Path) -> None:
        digest, size = await asyncio.to_thread(_sha256_file, path)
        url = self._url(name)
        headers = self._headers("PUT", url, digest)
        headers["content-length"] = str(size)

        async def body() -> AsyncIterator[bytes]:
            with path.open("rb") as source:
                while block := await asyncio.to_thread(source.read, _UPLOAD_BLOCK):
                    yield block

        async with self._http().put(url, data=body(), headers=headers) as resp:
            await self._check(resp, "PUT")

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        url = self._url(name)
        headers = self._headers("GET", url, range=f"bytes={offset}-{offset + length - 1}")
        async with self._http().get(url, headers=headers) as resp:
            if resp.status == 416:
                return b""
            if resp.status == 404:
                raise NoSuchObject("no such object")
            await self._check(resp, "GET")
            data = await resp.read()
        return data if resp.status == 206 else data[offset : offset + length]

    async def size(self, name: str) -> int | None:
        url = self._url(name)
        async with self._http().head(url, headers=self._headers("HEAD", url)) as resp:
            if resp.status == 404:
                return None
            await self._check(resp, "HEAD")
            return int(resp.headers["Content-Length"])

    async def rewrite_head(self, name: str, data: bytes) -> None:
        size = await self.size(name)
        if size is None:
            raise NoSuchObject("no such object")
        async with self.writer(name) as handle:
            offset = 0
            while offset < size:
                part = await self.get_range(name, offset, min(_UPLOAD_BLOCK * 8, size - offset))
                if not part:
                    raise StorageError("the object shrank while being rewritten")
                handle.write(part)
                offset += len(part)
            handle.seek(0)
            handle.write(data)
            handle.seek(0, os.SEEK_END)

    async def delete(self, name: str) -> None:
        url = self._url(name)
        async with self._http().delete(url, headers=self._headers("DELETE", url)) as resp:
            if resp.status != 404:
                await self._check(resp, "DELETE")

    async def list(self, prefix: str = "") -> list[str]:
        found: list[str] = []
        token = ""
        while True:
            query = "list-type=2&prefix=" + quote(self._prefix + prefix, safe="-_.~")
            if token:
                query += "&continuation-token=" + quote(token, safe="-_.~")
            url = self._url(query=query)
            async with self._http().get(url, headers=self._headers("GET", url)) as resp:
                await self._check(resp, "LIST")
                root = ElementTree.fromstring(await resp.read())
            ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
            for item in root.iter(f"{ns}Contents"):
                key = item.findtext(f"{ns}Key") or ""
                found.append(key[len(self._prefix) :])
            if (root.findtext(f"{ns}IsTruncated") or "false") != "true":
                return sorted(found)
            token = root.findtext(f"{ns}NextContinuationToken") or ""

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while block := source.read(_UPLOAD_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
