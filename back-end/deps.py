"""Typed access to what the lifespan built, as `Annotated` aliases: routers read like sentences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from config import Settings
from services.events import EventHub
from services.jobs import AsyncJobStore
from services.submission import Enqueue


@dataclass
class AppServices:
    settings: Settings
    jobs: AsyncJobStore
    hub: EventHub
    enqueue: Enqueue


def get_services(request: Request) -> AppServices:
    services: AppServices = request.app.state.services
    return services


def get_settings_dep(request: Request) -> Settings:
    return get_services(request).settings


def get_jobs(request: Request) -> AsyncJobStore:
    return get_services(request).jobs


def get_hub(request: Request) -> EventHub:
    return get_services(request).hub


def get_enqueue(request: Request) -> Enqueue:
    return get_services(request).enqueue


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
JobsDep = Annotated[AsyncJobStore, Depends(get_jobs)]
HubDep = Annotated[EventHub, Depends(get_hub)]
EnqueueDep = Annotated[Enqueue, Depends(get_enqueue)]
