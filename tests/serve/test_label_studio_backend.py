"""Label Studio's ML-backend protocol on a real `nerft serve` (a subprocess on a loopback port):
the calls Label Studio makes when a project connects a model (health, setup) and asks it for
pre-annotations (predict), answered with the same entities as POST /v1/ner."""

import pytest
import requests

from bench.live import Server
from nerft.data.annotation_formats import label_studio_config
from nerft.data.example import read_examples

LABELS = ("地点", "人名", "地理实体", "组织")


@pytest.fixture(scope="module")
def learned(learned_run, tmp_path_factory):
    """A server of the run that knows its sentences by heart (so it finds their entities, of
    every label), and three of them; the last with an astral character (𠮷) in front: Label
    Studio's offsets are code points, as nerft's."""
    run, data, _ = learned_run
    rows = [ex for ex in read_examples(data / "test.jsonl")
            if {"人名", "地点"} & {s.label for s in ex.entities}
            and {s.label for s in ex.entities} - {"人名", "地点"}][:2]
    server = Server(run, ["--max-texts", "4"], tmp_path_factory.mktemp("ls") / "server.log",
                    {"OMP_NUM_THREADS": "1"})
    yield server, [ex.text for ex in rows] + ["𠮷" + rows[0].text]
    server.stop()
# A project's own config: other control names and data key than nerft writes, and only two labels.
OWN_CONFIG = ('<View><Text name="doc" value="$sentence"/><Labels name="ner" toName="doc">'
              '<Label value="人名"/><Label value="地点"/></Labels></View>')


def _ner(server, sentences) -> list[list[dict]]:
    response = requests.post(server.url + "/v1/ner", json={"texts": sentences}, timeout=120)
    assert response.status_code == 200, response.text
    return [r["entities"] for r in response.json()["results"]]


def _regions(entities, labels=None):
    return [(e["start"], e["end"], e["text"], e["label"]) for e in entities
            if labels is None or e["label"] in labels]


def test_label_studio_connects_and_gets_the_served_entities(learned):
    server, sentences = learned
    base = server.url + "/label-studio"
    health = requests.get(base + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "UP"
    version = health.json()["model_version"]
    setup = requests.post(base + "/setup", json={"project": "1.1", "schema": label_studio_config(LABELS)},
                          timeout=30)
    assert setup.status_code == 200 and setup.json() == {"model_version": version}

    tasks = [{"id": i, "data": {"text": s}} for i, s in enumerate(sentences, 1)]
    got = requests.post(base + "/predict", json={"tasks": tasks, "label_config": label_studio_config(LABELS),
                                                 "project": "1.1", "params": {}}, timeout=120)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["model_version"] == version and len(body["results"]) == len(sentences)
    assert all(p["result"] for p in body["results"])  # there is something to compare
    for prediction, entities in zip(body["results"], _ner(server, sentences)):
        assert prediction["model_version"] == version
        regions = prediction["result"]
        assert [(r["value"]["start"], r["value"]["end"], r["value"]["text"], r["value"]["labels"][0])
                for r in regions] == _regions(entities)
        assert all(r["from_name"] == "label" and r["to_name"] == "text" and r["type"] == "labels"
                   for r in regions)
        assert len({r["id"] for r in regions}) == len(regions)


def test_a_projects_own_config_names_the_controls_the_data_key_and_the_labels(learned):
    server, sentences = learned
    tasks = [{"id": 7, "data": {"sentence": s}} for s in sentences]
    got = requests.post(server.url + "/label-studio/predict",
                        json={"tasks": tasks, "label_config": OWN_CONFIG}, timeout=120)
    assert got.status_code == 200, got.text
    served = _ner(server, sentences)
    # the tiny run tags with other labels too, so leaving them out is seen
    assert any(e["label"] not in {"人名", "地点"} for entities in served for e in entities)
    for prediction, entities in zip(got.json()["results"], served):
        regions = prediction["result"]
        # entities of labels the project does not have are left out (Label Studio refuses them)
        assert [(r["value"]["start"], r["value"]["end"], r["value"]["text"], r["value"]["labels"][0])
                for r in regions] == _regions(entities, {"人名", "地点"})
        assert all(r["from_name"] == "ner" and r["to_name"] == "doc" for r in regions)


def test_what_nerft_cannot_fill_is_refused_by_name(server):
    base = server.url + "/label-studio"
    choices = '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>'
    bad = requests.post(base + "/setup", json={"schema": choices}, timeout=30)
    assert bad.status_code == 422 and "schema: no <Labels toName=...>" in bad.json()["detail"]
    entity = requests.post(base + "/setup", json={"schema": '<!DOCTYPE x [<!ENTITY a "b">]><View/>'},
                           timeout=30)
    assert entity.status_code == 422 and "DOCTYPE" in entity.json()["detail"]
    missing = requests.post(base + "/predict", json={"tasks": [{"data": {"other": "张三"}}],
                                                     "label_config": label_studio_config(LABELS)}, timeout=30)
    assert missing.status_code == 422 and missing.json()["detail"].startswith("tasks[0].data.text:")
    unknown = requests.get(base + "/no-such-run/health", timeout=30)
    assert unknown.status_code == 422 and "no-such-run" in unknown.json()["detail"]
    # the service's limits hold here too (this server takes at most 4 sentences a request)
    many = requests.post(base + "/predict", json={"tasks": [{"data": {"text": "张三"}}] * 5}, timeout=30)
    assert many.status_code == 413


def test_with_an_api_key_label_studio_uses_basic_auth(keyed_server, api_key):
    base = keyed_server.url + "/label-studio"
    assert requests.get(base + "/health", timeout=30).status_code == 401
    # Label Studio's "basic authentication": any user name, the key as the password
    health = requests.get(base + "/health", auth=("label-studio", api_key), timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "UP"
    got = requests.post(base + "/predict", json={"tasks": [{"data": {"text": "联合国秘书长访问了日内瓦。"}}]},
                        auth=("label-studio", api_key), timeout=120)
    assert got.status_code == 200 and len(got.json()["results"]) == 1
