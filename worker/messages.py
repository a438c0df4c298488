"""A job's broker message, built as `app.send_task` would send it, without sending it.

The producer stores a job and pushes its message in one Redis script (`JobStore.create`): a
job is never stored without its message nor sent without its record, and submitting is one
round trip instead of three (create, publish, deadline). So the message must be exactly what
Celery and kombu's Redis transport would LPUSH for `trunkline.provision(job_id)` on our queue:
the task part comes from Celery's own `create_task_message`, the envelope is kombu's Redis
envelope for the default (anonymous) exchange. A test sends one message each way through real
Redis and compares them, so an upgrade of Celery or kombu that changes the format fails there.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

from celery import Celery
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as envelope_json

from worker.tasks import PROVISION_TASK


@dataclass(frozen=True)
class QueuedMessage:
    queue_key: str  # the Redis list the workers BRPOP
    payload: str  # the LPUSHed value


class TaskMessages:
    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue

    def provision(self, job_id: str) -> QueuedMessage:
        task_id = str(uuid.uuid4())
        task = self.app.amqp.create_task_message(
            task_id, PROVISION_TASK, [job_id], {}, reply_to=self.app.thread_oid,
            create_sent_event=False, ignore_result=None,
        )
        content_type, content_encoding, body = serialize(task.body, serializer="json")
        raw = body if isinstance(body, bytes) else body.encode(content_encoding)
        properties = {
            **task.properties,
            "delivery_mode": 2,
            # The anonymous exchange: the routing key is the queue (what Celery's default
            # queue uses, and what `send_task(..., queue=...)` resolves to).
            "delivery_info": {"exchange": "", "routing_key": self.queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        envelope = {
            "body": base64.b64encode(raw).decode(),
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": task.headers,
            "properties": properties,
        }
        # Priority 0 on kombu's Redis transport: the list is named after the queue itself.
        return QueuedMessage(self.queue, envelope_json(envelope))
