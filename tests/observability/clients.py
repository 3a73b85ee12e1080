"""The sync HTTP client these tests use, closed explicitly."""

from __future__ import annotations

import tritonclient.http as httpclient


class HttpClient(httpclient.InferenceServerClient):  # type: ignore[misc]
    """The base __del__ joins a gevent pool, which raises InvalidThreadUseError when the cyclic GC
    runs it on a server thread; the tests close it themselves."""

    def __del__(self) -> None:
        pass
