"""FastAPI dependencies: what a route needs, taken from the app's state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from krypton.models.deployment import Deployment
from krypton.service.config import Settings
from krypton.service.queue import JobQueue

__all__ = ["DeploymentDep", "QueueDep", "SettingsDep"]


def get_queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_deployment(request: Request) -> Deployment:
    deployment: Deployment = request.app.state.deployment
    return deployment


QueueDep = Annotated[JobQueue, Depends(get_queue)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DeploymentDep = Annotated[Deployment, Depends(get_deployment)]

