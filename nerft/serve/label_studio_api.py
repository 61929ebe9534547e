"""Label Studio's ML-backend protocol, so a Label Studio project pre-annotates with a served run.

In Label Studio: Settings → Model → Connect Model, URL `http://HOST:PORT/label-studio` (the
first served run) or `http://HOST:PORT/label-studio/RUN`; with `--api-key`, choose basic
authentication with any user name and the key as the password. Label Studio then calls

- `GET  {url}/health`  → `{"status": "UP", ...}`;
- `POST {url}/setup`   `{"project", "schema": <label config>, ...}` → `{"model_version"}`;
- `POST {url}/predict` `{"tasks": [...], "label_config", ...}` →
  `{"results": [{"model_version", "result": [regions], "score"?}, ...], "model_version"}`,
  one prediction per task, in order (the protocol of label-studio-ml-backend's `api.py`).

The labeling config says where the sentence is (`<Text name=... value="$key">`) and which labels
the project has (`<Labels name=... toName=...>`). Regions carry code-point offsets, as Label
Studio's Text tag stores them (`nerft.data.annotation_formats.label_studio_region`); an entity
whose label the project does not have is left out, since Label Studio would refuse the region.
Sentences go through the same queue, limits and decoder as `POST /v1/ner`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from nerft.data.annotation_formats import LS_LABELS_NAME, LS_TEXT_NAME, label_studio_region

MAX_CONFIG_CHARS = 100_000


@dataclass(frozen=True)
class LabelingTarget:
    """What a labeling config asks of a text NER model."""

    labels_name: str  # <Labels name=...>: the regions' from_name
    text_name: str  # <Text name=...>: their to_name
    data_key: str  # <Text value="$key">: where a task keeps its sentence
    labels: tuple[str, ...]  # the <Label value=...> the project has


DEFAULT_TARGET = LabelingTarget(LS_LABELS_NAME, LS_TEXT_NAME, LS_TEXT_NAME, ())


def labeling_target(config: str | None, field: str) -> LabelingTarget:
    """The Labels control over a Text object in `config`; the config nerft writes
    (`nerft select --format label-studio`) when there is none. 422 naming `field` otherwise."""
    if config is None or not config.strip():
        return DEFAULT_TARGET
    if len(config) > MAX_CONFIG_CHARS:
        raise HTTPException(413, f"{field}: a labeling config of {len(config):,} characters "
                                 f"(at most {MAX_CONFIG_CHARS:,})")
    if "<!DOCTYPE" in config or "<!ENTITY" in config:  # no entity expansion from a request
        raise HTTPException(422, f"{field}: a labeling config may not declare a DOCTYPE or entities")
    try:
        root = ElementTree.fromstring(config)
    except ElementTree.ParseError as e:
        raise HTTPException(422, f"{field}: not a labeling config ({e})") from None
    texts = {t.get("name"): (t.get("value") or "") for t in root.iter("Text")}
    for control in root.iter("Labels"):
        value = texts.get(control.get("toName"), "")
        if value.startswith("$") and len(value) > 1:
            labels = tuple(x.get("value") for x in control.iter("Label") if x.get("value"))
            return LabelingTarget(control.get("name") or LS_LABELS_NAME, control.get("toName"),
                                  value[1:], labels)
    raise HTTPException(422, f"{field}: no <Labels toName=...> over a <Text value=\"$key\"> in the "
                             "labeling config: nerft pre-annotates text spans (named entities)")


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # project, hostname, access_token...: not needed
    # Label Studio's field is `schema`, the name of a BaseModel method: read it by alias
    labeling_config: StrictStr | None = Field(None, alias="schema")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # project, params, model_version...: not needed
    tasks: list[dict]
    label_config: StrictStr | None = None


def task_text(task: dict, key: str, where: str) -> str:
    data = task.get("data")
    text = data.get(key) if isinstance(data, dict) else None
    if not isinstance(text, str):
        raise HTTPException(422, f"{where}.data.{key}: the task has no text under {key!r} (the "
                                 "labeling config's <Text value=\"$...\"> names it)")
    return text


def prediction(decoded, target: LabelingTarget, version: str, task_number: int) -> dict:
    """One task's prediction: its entities as regions of the config's controls."""
    keep = [e for e in decoded.entities if not target.labels or e.label in target.labels]
    regions = []
    for k, entity in enumerate(keep, 1):
        region = label_studio_region(entity, f"{task_number}-{k}")
        regions.append({**region, "from_name": target.labels_name, "to_name": target.text_name})
    return {"model_version": version, "result": regions}


def add_label_studio_routes(app: FastAPI, service) -> None:
    def run_of(run: str | None):
        return service.default if run is None else service.run_named(run, "run (the URL's last part)")

    async def health(run: str | None = None):
        chosen = run_of(run)
        return {"status": "UP" if service.alive else "DOWN", "model_class": "nerft",
                "model_version": chosen.name}

    async def setup(body: SetupRequest, run: str | None = None):
        chosen = run_of(run)
        labeling_target(body.labeling_config, "schema")  # a config nerft cannot fill fails here, by name
        return {"model_version": chosen.name}

    async def predict(body: PredictRequest, request: Request, run: str | None = None):
        chosen = run_of(run)
        target = labeling_target(body.label_config, "label_config")
        texts = [task_text(t, target.data_key, f"tasks[{i}]") for i, t in enumerate(body.tasks)]
        fields = [f"tasks[{i}].data.{target.data_key}" for i in range(len(texts))]
        decoded = await service.decode_texts(texts, request, fields, chosen) if texts else []
        return {"results": [prediction(d, target, chosen.name, i) for i, d in enumerate(decoded, 1)],
                "model_version": chosen.name}

    for prefix in ("/label-studio", "/label-studio/{run}"):
        app.add_api_route(f"{prefix}/health", health, methods=["GET"],
                          summary="Label Studio ML backend: liveness (needs the API key)")
        app.add_api_route(f"{prefix}/setup", setup, methods=["POST"],
                          summary="Label Studio ML backend: check the labeling config")
        app.add_api_route(f"{prefix}/predict", predict, methods=["POST"],
                          summary="Label Studio ML backend: pre-annotations of tasks")
