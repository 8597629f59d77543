"""Results back to the PACS: a finished heatmap's DICOM results, stored in the image's study.

Once a heatmap of an image from a PACS is computed, its worker makes the
three DICOM results (:mod:`krypton.core.dicom_results`: Parametric Map,
overlay, measurement report) and stores them in one STOW-RS request into the
image's study. A PACS that does not answer (or answers 408, 429 or 5xx) is
tried again with exponential backoff; one that refuses is not. Either way
the job's ``delivery`` says what was stored where, or why nothing was: an
outcome is never dropped silently, and the heatmap stays readable from
Krypton whatever the PACS did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from krypton import render
from krypton.core import dicom_results
from krypton.core.dicom_results import DicomSource, Heatmap
from krypton.core.plans import HeatmapPlan
from krypton.models.pacs import PacsServer
from krypton.service import constants
from krypton.service.config import DeliveryPolicy
from krypton.service.pacs import PacsRefused, PacsUnavailable, store_instances
from krypton.service.problems import NotForThisInput, problem_for
from krypton.service.schemas import Delivery, Job, Role, StoredInstance

__all__ = ["deliver", "results_for_pacs"]

logger = logging.getLogger(__name__)

ROLES: tuple[Role, ...] = ("parametric_map", "overlay", "report")
"""What each result object is, in the order they are made and stored."""


def results_for_pacs(job: Job, result: bytes, images: list[bytes], *, weights: str
                     ) -> list[bytes] | str:
    """The encoded Parametric Map, overlay and report of a finished heatmap job; or why
    its image gets no DICOM result. Blocks: run it in a thread."""
    assert isinstance(job.params, HeatmapPlan)
    assert job.run is not None and job.prediction is not None
    source = dicom_results.dicom_source(images[0])
    if isinstance(source, str):
        return source
    values = render.view_values(render.read_npy(result), job.prediction.target_probability,
                                "drop")
    heatmap = Heatmap(plan=job.params, run=job.run, prediction=job.prediction, values=values,
                      random_weights=job.random_weights, window=job.window)
    return _documents(source, heatmap, images[-1], weights)


def _documents(source: DicomSource, heatmap: Heatmap, overlay_image: bytes,
               weights: str) -> list[bytes]:
    made = [dicom_results.parametric_map(source, heatmap),
            dicom_results.overlay(source, heatmap, overlay_image,
                                  max_side=constants.MAX_OVERLAY_SIDE)]
    return [*made, dicom_results.report(source, heatmap, made, weights=weights)]


async def deliver(server: PacsServer, study: str, documents: list[bytes] | str, *,
                  policy: DeliveryPolicy, stopping: Callable[[], bool] = lambda: False
                  ) -> Delivery:
    """Store ``documents`` into ``study`` on ``server``, retrying an unreachable PACS.

    ``documents`` is what :func:`results_for_pacs` gave: a string says why none
    was made, and is recorded as such. A worker told to stop gives up between
    attempts.
    """
    if isinstance(documents, str):
        error = NotForThisInput(f"no DICOM result was made for this image: {documents}")
        return Delivery(pacs=server.name, status="not_made", attempts=0,
                        study_instance_uid=study, error=problem_for(error))
    attempt = 0
    while True:
        attempt += 1
        try:
            stored = await asyncio.to_thread(store_instances, server, study, documents,
                                             timeout=policy.timeout_seconds)
        except PacsUnavailable as exc:
            if attempt >= policy.attempts or stopping():
                return _failed(server, study, attempt, exc)
            wait = policy.backoff_seconds * 2 ** (attempt - 1)
            logger.warning("storing results in PACS %r: attempt %d of %d failed (%s); "
                           "next in %g s", server.name, attempt, policy.attempts,
                           exc.detail, wait)
            await asyncio.sleep(wait)
            continue
        except PacsRefused as exc:
            return _failed(server, study, attempt, exc)
        logger.info("stored %d result objects in PACS %r", len(stored), server.name)
        return Delivery(pacs=server.name, status="stored", attempts=attempt,
                        study_instance_uid=study, instances=_described(documents))


def _failed(server: PacsServer, study: str, attempts: int, exc: Exception) -> Delivery:
    logger.warning("storing results in PACS %r failed after %d attempt(s): %s", server.name,
                   attempts, exc)
    return Delivery(pacs=server.name, status="failed", attempts=attempts,
                    study_instance_uid=study, error=problem_for(exc))


def _described(documents: list[bytes]) -> list[StoredInstance]:
    """What each stored document is, read from the document (the PACS's answer lists the
    instances in no promised order)."""
    instances = []
    for role, document in zip(ROLES, documents, strict=True):
        header = dcmread(DicomBytesIO(document), stop_before_pixels=True)
        instances.append(StoredInstance(
            role=role, sop_class_uid=str(header.SOPClassUID),
            sop_instance_uid=str(header.SOPInstanceUID),
            series_instance_uid=str(header.SeriesInstanceUID)))
    return instances
