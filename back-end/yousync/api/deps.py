"""Typed access to what the lifespan built, as `Annotated` aliases: routers read like sentences."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from yousync.api.limits import UploadSlots
from yousync.api.streaming.events import EventHub
from yousync.api.streaming.read_batcher import StreamReadBatcher
from yousync.api.uploads.staging import UploadStaging
from yousync.api.uploads.submission import Enqueue
from yousync.core.config import Settings
from yousync.core.jobs import AsyncJobStore


@dataclass
class AppServices:
    settings: Settings
    jobs: AsyncJobStore
    hub: EventHub
    stream_reads: StreamReadBatcher
    enqueue: Enqueue
    revoke: Callable[[str], None]
    upload_slots: UploadSlots
    staging: UploadStaging


def services_of(request: Request) -> AppServices:
    services: AppServices = request.app.state.services
    return services


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hand-off (and a wait for one of 40 threads) per
# dependency per request — most of a stream start's cost in a storm of reconnects.


async def get_services(request: Request) -> AppServices:
    return services_of(request)


async def get_settings_dep(request: Request) -> Settings:
    return services_of(request).settings


async def get_jobs(request: Request) -> AsyncJobStore:
    return services_of(request).jobs


async def get_enqueue(request: Request) -> Enqueue:
    return services_of(request).enqueue


async def get_revoke(request: Request) -> Callable[[str], None]:
    return services_of(request).revoke


async def get_upload_slots(request: Request) -> UploadSlots:
    return services_of(request).upload_slots


async def get_staging(request: Request) -> UploadStaging:
    return services_of(request).staging


ServicesDep = Annotated[AppServices, Depends(get_services)]
UploadSlotsDep = Annotated[UploadSlots, Depends(get_upload_slots)]
RevokeDep = Annotated[Callable[[str], None], Depends(get_revoke)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
JobsDep = Annotated[AsyncJobStore, Depends(get_jobs)]
EnqueueDep = Annotated[Enqueue, Depends(get_enqueue)]
StagingDep = Annotated[UploadStaging, Depends(get_staging)]
