"""``wkd_client``: a small typed Python client of the WKD service (httpx + pydantic, no torch).

See :class:`Client`; docs/service.md lists the endpoints it wraps.
"""

from wkd_client.client import Client, WkdError, WkdTimeoutError
from wkd_client.models import (
    Artifact,
    Checkpoint,
    CheckpointPage,
    Event,
    Job,
    JobPage,
    JobSummary,
    MethodSummary,
    Metric,
    Progress,
    Study,
    StudyItem,
    StudyJob,
    StudyPage,
)

__all__ = [
    "Artifact",
    "Checkpoint",
    "CheckpointPage",
    "Client",
    "Event",
    "Job",
    "JobPage",
    "JobSummary",
    "MethodSummary",
    "Metric",
    "Progress",
    "Study",
    "StudyItem",
    "StudyJob",
    "StudyPage",
    "WkdError",
    "WkdTimeoutError",
]
