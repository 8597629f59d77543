"""A small client for the Krypton service, on httpx: submit, wait, fetch, predict, delete.

Example::

    from krypton.client import Client

    with Client("http://127.0.0.1:8000", api_key=KEY) as krypton:
        job = krypton.submit("retina.jpg", model="resnet18", stride=8, wait=10)
        job = krypton.wait(job)            # follows the job's events if not done yet
        png = krypton.heatmap(job, "png")               # or "json", "npy", "dcm"
        print(job["prediction"]["predicted_label"])

        # An image in a PACS the service knows, by its UIDs; results go back to its study.
        job = krypton.wait(krypton.explain_instance("pacs", study, series, instance))
        for stored in stored_results(job):  # what the PACS now holds
            print(stored["role"], stored["sop_instance_uid"])

:class:`AsyncClient` has the same methods, awaited. Every error answer
raises :class:`KryptonError`, which carries the service's problem document.
Loads nothing of the engine: it needs httpx and httpx-sse alone.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import httpx
from httpx_sse import aconnect_sse, connect_sse

__all__ = ["AsyncClient", "Client", "Event", "KryptonError", "stored_results"]

Job = dict[str, Any]
Event = tuple[str, Any]
"""A Server-Sent Event: its name (``progress``, ``partial``, ``succeeded``, ``failed``)
and its decoded data."""
Format = Literal["png", "json", "npy", "dcm", "overlay.png", "overlay.dcm"]
_FORMATS: tuple[Format, ...] = ("png", "overlay.png", "json", "npy", "dcm", "overlay.dcm")

_FINISHED = ("succeeded", "failed")


class KryptonError(Exception):
    """An error answer of the service, with its RFC 9457 problem document."""

    def __init__(self, problem: Mapping[str, Any], status: int) -> None:
        self.problem = dict(problem)
        self.status = status
        self.type = str(problem.get("type", ""))
        self.retry_after: int | None = None
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}")


ImageSource = str | os.PathLike[str] | bytes


class _Requests:
    """What both clients share: the request each method sends and how answers are read."""

    def __init__(self, api_key: str | None) -> None:
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    @staticmethod
    def upload(image: ImageSource, fields: Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(image, bytes):
            name, data = "image", image
        else:
            path = Path(image)
            name, data = path.name, path.read_bytes()
        form = {key: str(value) for key, value in fields.items() if value is not None}
        return {"files": {"image": (name, io.BytesIO(data), "application/octet-stream")},
                "data": form}

    @staticmethod
    def instance(pacs: str, study: str, series: str, instance: str,
                 fields: Mapping[str, Any]) -> dict[str, Any]:
        """The request naming an instance in a PACS by its UIDs."""
        return {"url": f"/v1/pacs/{pacs}/heatmaps", "json": {
            "study_instance_uid": study, "series_instance_uid": series,
            "sop_instance_uid": instance, **fields}}

    @staticmethod
    def prefer(wait: int) -> dict[str, str]:
        return {"Prefer": f"wait={wait}"} if wait > 0 else {}

    @staticmethod
    def result_url(job: Job, fmt: Format, query: Mapping[str, Any]) -> httpx.URL:
        """The job document's link for ``fmt``, with ``query`` added to its own.

        Links are the service's to name (the overlay is ``heatmap.png?overlay=1``);
        a result the job does not offer is refused here with what it does offer.
        """
        if fmt not in _FORMATS:
            raise ValueError(f"fmt must be one of {', '.join(_FORMATS)}, got {fmt!r}")
        links: dict[str, str] = job.get("links", {})
        name = fmt.replace(".", "_")
        if name not in links:
            offered = sorted(f for f in _FORMATS if f.replace(".", "_") in links)
            raise KryptonError({
                "type": "urn:krypton:problem:result-not-offered",
                "title": "Result not offered",
                "detail": f"job {_job_id(job)} is {job.get('status')} and offers "
                          f"{', '.join(offered) or 'no results'}, not {fmt}"}, 409)
        return httpx.URL(links[name]).copy_merge_params(
            {key: str(value) for key, value in query.items()})

    @staticmethod
    def checked(response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        try:
            problem = response.json()
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:200]}
        error = KryptonError(problem, response.status_code)
        if "Retry-After" in response.headers and response.headers["Retry-After"].isdigit():
            error.retry_after = int(response.headers["Retry-After"])
        raise error


class Client(_Requests):
    """A synchronous client of one service.

    Args:
        url: where the service answers, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer KEY`` (none when it runs open).
        timeout: seconds for one HTTP exchange.
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 90.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(api_key)
        self.http = httpx.Client(base_url=url, headers=self.headers, timeout=timeout,
                                 transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(self, image: ImageSource, *, wait: int = 0, **fields: Any) -> Job:
        """Queue a heatmap (form fields as keywords: ``model``, ``stride``, ``mode``...).

        ``wait`` seconds (at most 60) asks the service to answer with the
        finished job if it finishes by then (``Prefer: wait``).
        """
        response = self.http.post("/v1/heatmaps", **self.upload(image, fields),
                                  headers=self.prefer(wait))
        job: Job = self.checked(response).json()
        return job

    def explain_instance(self, pacs: str, study: str, series: str, instance: str, *,
                         wait: int = 0, **fields: Any) -> Job:
        """Queue a heatmap of an instance in the service's PACS ``pacs``, by its Study, Series
        and SOP Instance UIDs (fields as :meth:`submit`'s, and ``store_results=False`` to
        keep the results out of the PACS)."""
        response = self.http.post(**self.instance(pacs, study, series, instance, fields),
                                  headers=self.prefer(wait))
        job: Job = self.checked(response).json()
        return job

    def job(self, job: Job | str) -> Job:
        document: Job = self.checked(self.http.get(f"/v1/heatmaps/{_job_id(job)}")).json()
        return document

    def events(self, job: Job | str, *, timeout: float | None = None) -> Iterator[Event]:
        """The job's Server-Sent Events until it has finished."""
        with connect_sse(self.http, "GET", f"/v1/heatmaps/{_job_id(job)}/events",
                         timeout=timeout) as source:
            self.checked(source.response)
            for event in source.iter_sse():
                yield event.event, event.json()

    def wait(self, job: Job | str, *, timeout: float = 600.0) -> Job:
        """The finished job, followed on its events stream (no polling)."""
        if self.job(job)["status"] not in _FINISHED:
            for name, _ in self.events(job, timeout=timeout):
                if name in _FINISHED:
                    break
        return self.job(job)

    def heatmap(self, job: Job | str, fmt: Format = "png", **query: Any) -> bytes:
        """A result's bytes, fetched by the link the job's current document gives.

        Query keywords go with it: ``view="probability"``, and for the overlay
        ``size`` and ``alpha``.
        """
        url = self.result_url(self.job(job), fmt, query)
        return self.checked(self.http.get(url)).content

    def predict(self, image: ImageSource, **fields: Any) -> dict[str, Any]:
        answer: dict[str, Any] = self.checked(self.http.post(
            "/v1/predict", **self.upload(image, fields))).json()
        return answer

    def delete(self, job: Job | str) -> None:
        self.checked(self.http.delete(f"/v1/heatmaps/{_job_id(job)}"))

    def models(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.checked(self.http.get("/v1/models")).json()
        return found

    def datasets(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.checked(self.http.get("/v1/datasets")).json()
        return found

    def pacs(self) -> list[dict[str, Any]]:
        """The PACS the service reads images from and stores results in."""
        found: list[dict[str, Any]] = self.checked(self.http.get("/v1/pacs")).json()
        return found


class AsyncClient(_Requests):
    """The asynchronous twin of :class:`Client`: the same methods, awaited."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 90.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(api_key)
        self.http = httpx.AsyncClient(base_url=url, headers=self.headers, timeout=timeout,
                                      transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def submit(self, image: ImageSource, *, wait: int = 0, **fields: Any) -> Job:
        response = await self.http.post("/v1/heatmaps", **self.upload(image, fields),
                                        headers=self.prefer(wait))
        job: Job = self.checked(response).json()
        return job

    async def explain_instance(self, pacs: str, study: str, series: str, instance: str, *,
                               wait: int = 0, **fields: Any) -> Job:
        response = await self.http.post(**self.instance(pacs, study, series, instance, fields),
                                        headers=self.prefer(wait))
        job: Job = self.checked(response).json()
        return job

    async def job(self, job: Job | str) -> Job:
        document: Job = self.checked(await self.http.get(f"/v1/heatmaps/{_job_id(job)}")).json()
        return document

    async def events(self, job: Job | str, *, timeout: float | None = None
                     ) -> AsyncIterator[Event]:
        async with aconnect_sse(self.http, "GET", f"/v1/heatmaps/{_job_id(job)}/events",
                                timeout=timeout) as source:
            self.checked(source.response)
            async for event in source.aiter_sse():
                yield event.event, event.json()

    async def wait(self, job: Job | str, *, timeout: float = 600.0) -> Job:
        if (await self.job(job))["status"] not in _FINISHED:
            async for name, _ in self.events(job, timeout=timeout):
                if name in _FINISHED:
                    break
        return await self.job(job)

    async def heatmap(self, job: Job | str, fmt: Format = "png", **query: Any) -> bytes:
        url = self.result_url(await self.job(job), fmt, query)
        return self.checked(await self.http.get(url)).content

    async def predict(self, image: ImageSource, **fields: Any) -> dict[str, Any]:
        response = await self.http.post("/v1/predict", **self.upload(image, fields))
        answer: dict[str, Any] = self.checked(response).json()
        return answer

    async def delete(self, job: Job | str) -> None:
        self.checked(await self.http.delete(f"/v1/heatmaps/{_job_id(job)}"))

    async def models(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.checked(await self.http.get("/v1/models")).json()
        return found

    async def datasets(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.checked(await self.http.get("/v1/datasets")).json()
        return found

    async def pacs(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.checked(await self.http.get("/v1/pacs")).json()
        return found


def stored_results(job: Job) -> list[dict[str, Any]]:
    """The DICOM results a finished job stored in its PACS (role, SOP class, UIDs).

    Raises:
        KryptonError: the job stored nothing: its delivery failed (after its retries), no
            DICOM result could be made, or it has no PACS to store in; the error carries
            the job's problem document.
    """
    delivery = job.get("delivery")
    if delivery is None:
        raise KryptonError({"title": "Nothing stored", "detail": (
            f"job {job.get('id')} is {job.get('status')} and stores no results in a PACS: it "
            "has not finished, has no PACS to store them in (see its `pacs`), or was asked "
            "not to")}, 409)
    if delivery["status"] != "stored":
        raise KryptonError(delivery["error"] or {}, int((delivery["error"] or {}).get(
            "status", 502)))
    stored: list[dict[str, Any]] = delivery["instances"]
    return stored


def _job_id(job: Job | str) -> str:
    return job if isinstance(job, str) else str(job["id"])
