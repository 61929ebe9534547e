"""predict, serve, compare and select read entities through the one generate -> parse path:
the same sentences give the same answers and entities, as the same `Decoded` type."""

import pytest
import torch

from nerft.data.example import Example
from nerft.eval.compare import predict_data_sets
from nerft.infer.predict import Decoded, predict
from nerft.infer.select import rank_uncertain
from nerft.models.loader import load_model
from nerft.serve.engine import sentence_decoder

# Hand-written; the tiny run's random adapter finds "entities" in some of them and not in others.
TEXTS = ["张三在北京大学读书。", "国会外有大约200名警察驻守，防止抗议人群闯入国会。",
         "李四昨天去了上海。", "联合国秘书长访问了日内瓦。"]


@pytest.fixture(scope="module")
def loaded(tiny_lora_run):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer model: threads only add synchronisation
    yield load_model(str(tiny_lora_run))
    torch.set_num_threads(before)


def test_predict_serve_compare_and_select_agree(loaded, tiny_lora_run):
    rows = [(f"s{i}", t) for i, t in enumerate(TEXTS)]
    predicted = predict(*loaded, rows, batch_size=4)
    assert all(type(d) is Decoded for d in predicted)
    entities = [d.entities for d in predicted]
    assert any(entities) and not all(entities), "the sentences must tell found from not found"

    served = sentence_decoder(*loaded, max_batch=4)(TEXTS)
    assert all(type(d) is Decoded for d in served)
    assert [d.answer for d in served] == [d.answer for d in predicted]
    assert [d.entities for d in served] == entities
    assert [d.prompt_tokens for d in served] == [d.prompt_tokens for d in predicted]

    examples = [Example(i, t, []) for i, t in rows]
    (compared,) = predict_data_sets(str(tiny_lora_run), [("tiny", examples)], batch_size=4)
    assert compared == entities

    scored = {s.id: s for s in rank_uncertain(*loaded, rows, batch_size=4)}
    assert [scored[i].entities for i, _ in rows] == entities
    assert [scored[i].answer for i, _ in rows] == [d.answer for d in predicted]
