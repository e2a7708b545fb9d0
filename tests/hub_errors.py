"""A Hub HTTP error as huggingface_hub raises it, for tests that make the (patched) Hub refuse."""

import httpx2 as httpx
from huggingface_hub.errors import HfHubHTTPError


def hub_http_error(status: int, message: str, url: str = "https://huggingface.co/api/repos/create") -> HfHubHTTPError:
    return HfHubHTTPError(message, response=httpx.Response(status, request=httpx.Request("POST", url)))
