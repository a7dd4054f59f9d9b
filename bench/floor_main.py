"""The floor pipeline the benchmark compares AIPROD against: the least any
HTTP-to-Pub/Sub-to-function pipeline on these emulators can do. One HTTP function
writes one Firestore document and publishes once; one push delivery reaches a
function that writes one document. Nothing else."""

import base64
import json
import os

import functions_framework
from cloudevents.http import CloudEvent
from flask import Request
from google.cloud import firestore
from google.cloud.pubsub_v1 import PublisherClient

PROJECT = os.environ["GOOGLE_CLOUD_PROJECT"]
db = firestore.Client(project=PROJECT)
publisher = PublisherClient()
topic = publisher.topic_path(PROJECT, "floor")


@functions_framework.http
def floor_http(request: Request) -> tuple[str, int]:
    body = request.get_json()
    item = body["id"]
    db.collection("floor").document(item).set({"stage": "admitted", "run": body["run"]})
    publisher.publish(topic, json.dumps({"id": item}).encode()).result()
    return json.dumps({"id": item}), 201


@functions_framework.cloud_event
def floor_push(event: CloudEvent) -> None:
    body = json.loads(base64.b64decode(event.data["message"]["data"]))
    db.collection("floor").document(body["id"]).update({"stage": "done"})
