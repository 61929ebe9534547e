"""The worked example's recipe (SPEC.md, "The worked example"), re-implemented as the benchmark's
baseline: what a user following that tutorial would run.

Faithful to the recipe:
- data: each raw ccfbdci row becomes (instruction = fixed system prompt, input = "文本:{text}",
  output = the entity objects written back to back, or 没有找到任何实体). The label of an entity
  is the first of its `entity_names` in {地点, 人名, 地理实体, 组织}, and a variable that keeps its
  value from the previous entity when no name matches (the recipe's carry-over, kept as is);
- encoding: ChatML written by string concatenation, the answer closed by the PAD token (not
  <|im_end|>), labels -100 on the prompt, 384 tokens at most, truncated after concatenation
  (which can cut the answer), `datasets.Dataset.map` one row at a time;
- model: LoRA r=8, alpha=32, dropout 0.1 on q/k/v/o/gate/up/down, `enable_input_require_grads`;
- training: HF `Trainer`, batch 4 x gradient accumulation 4, lr 1e-4, gradient checkpointing,
  `DataCollatorForSeq2Seq(padding=True)`, the model's own loss over the full vocabulary;
- inference: base model + LoRA, one sentence at a time, `model.generate(input_ids,
  max_new_tokens=512)`, prompt from the tokenizer's chat template, special tokens skipped.

Changed, because this machine or a side-by-side benchmark forces it:
1. model: a local folder (no hub here) instead of `qwen/Qwen2-1.5B-Instruct` from ModelScope,
   and float32 on CPU (bf16 is >10x slower on this CPU); `trust_remote_code` not passed;
2. length of training: `max_steps` (a sample budget) instead of 2 epochs; the learning rate is
   held constant: the first few dozen steps of the example's 2-epoch linear decay (~1,770 steps
   on the example's 90% training pool) are within 3% of 1e-4, whereas a linear decay squeezed into a short run is not;
3. rows: the benchmark passes the raw rows of its own train/validation/test selection (the same
   rows nerft gets), not the example's first-10% test pool; `seed` 42 is set before LoRA init;
4. no checkpoint every 100 steps and no SwanLab (nothing to watch in a benchmark);
5. decoding: greedy with stop tokens [<|im_end|>, <|endoftext|>]. Qwen2-1.5B-Instruct's
   generation_config ships both stop ids (so the PAD-terminated answers stop) plus sampling
   (T=0.7, top-p 0.8, top-k 20, repetition penalty 1.1); the GGUF-converted demo model lists
   only <|im_end|>. Greedy keeps F1 reproducible; the stop ids keep the example's behaviour.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

SYSTEM_PROMPT = (
    "你是一个文本实体识别领域的专家，你需要从给定的句子中提取 地点; 人名; 地理实体; 组织 实体. "
    '以 json 格式输出, 如 {"entity_text": "南京", "entity_label": "地理实体"} '
    "注意: 1. 输出的每一行都必须是正确的 json 字符串. "
    '2. 找不到任何实体时, 输出"没有找到任何实体".'
)
NO_ENTITY = "没有找到任何实体"
LABEL_NAMES = ("地点", "人名", "地理实体", "组织")
MAX_LENGTH = 384
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MAX_NEW_TOKENS = 512


def answer_text(raw_row: dict) -> str:
    """The example's target: entity objects concatenated with no separator."""
    out = ""
    label = ""  # the recipe's variable: it keeps the previous entity's value when nothing matches
    for entity in raw_row["entities"]:
        for name in entity["entity_names"]:
            if name in LABEL_NAMES:
                label = name
                break
        out += f'{{"entity_text": "{entity["entity_text"]}", "entity_label": "{label}"}}'
    return out or NO_ENTITY


def to_instruction_rows(raw_rows: list[dict]) -> list[dict]:
    return [{"instruction": SYSTEM_PROMPT, "input": f"文本:{r['text']}", "output": answer_text(r)}
            for r in raw_rows]


def make_process_func(tokenizer):
    """The example's per-row encoder: hand-written ChatML, PAD as the answer's last token."""
    def process_func(example: dict) -> dict:
        instruction = tokenizer(
            f"<|im_start|>system\n{example['instruction']}<|im_end|>\n"
            f"<|im_start|>user\n{example['input']}<|im_end|>\n<|im_start|>assistant\n",
            add_special_tokens=False)
        response = tokenizer(f"{example['output']}", add_special_tokens=False)
        input_ids = instruction["input_ids"] + response["input_ids"] + [tokenizer.pad_token_id]
        attention_mask = instruction["attention_mask"] + response["attention_mask"] + [1]
        labels = [-100] * len(instruction["input_ids"]) + response["input_ids"] + [tokenizer.pad_token_id]
        if len(input_ids) > MAX_LENGTH:
            input_ids, attention_mask, labels = (x[:MAX_LENGTH] for x in (input_ids, attention_mask, labels))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return process_func


def encode_dataset(tokenizer, raw_rows: list[dict]):
    """`Dataset.map(process_func)` over the instruction rows, as the example does."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    ds = Dataset.from_list(to_instruction_rows(raw_rows))
    return ds.map(make_process_func(tokenizer), remove_columns=ds.column_names)


def load_model(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if torch.cuda.is_available():
        model = model.cuda()
    return model, tokenizer


def add_lora(model):
    from peft import LoraConfig, TaskType, get_peft_model

    model.enable_input_require_grads()  # needed with gradient checkpointing on a frozen base
    config = LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules=TARGET_MODULES,
                        inference_mode=False, r=8, lora_alpha=32, lora_dropout=0.1)
    return get_peft_model(model, config)


def training_arguments(output_dir: Path, max_steps: int, seed: int = 42):
    from transformers import TrainingArguments

    on_cuda = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        logging_steps=10,
        max_steps=max_steps,  # change 2: instead of num_train_epochs=2
        learning_rate=1e-4,
        lr_scheduler_type="constant",  # change 2
        gradient_checkpointing=True,
        save_strategy="no",  # change 4: instead of save_steps=100
        report_to=[],
        seed=seed,
        bf16=on_cuda,
        use_cpu=not on_cuda,
        disable_tqdm=True,
    )


def build_trainer(model, tokenizer, dataset, args, trainer_cls=None):
    from transformers import DataCollatorForSeq2Seq, Trainer

    collator = DataCollatorForSeq2Seq(tokenizer=tokenizer, padding=True)
    return (trainer_cls or Trainer)(model=model, args=args, train_dataset=dataset,
                                    data_collator=collator)


def stop_ids(tokenizer) -> list[int]:
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]  # change 5


def prompt_text(tokenizer, text: str) -> str:
    """The example's inference prompt, from the tokenizer's chat template."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"文本:{text}"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def predict(model, tokenizer, text: str, max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[str, int]:
    """One sentence, the example's way; returns (answer, tokens generated)."""
    prompt = prompt_text(tokenizer, text)
    model_inputs = tokenizer([prompt], return_tensors="pt").to(model.device)
    generated = model.generate(model_inputs.input_ids, max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=stop_ids(tokenizer),
                               pad_token_id=tokenizer.pad_token_id)
    new = generated[0, model_inputs.input_ids.shape[1]:]
    return tokenizer.batch_decode([new], skip_special_tokens=True)[0], int(new.numel())


@torch.no_grad()
def predict_batch(model, tokenizer, texts: list[str],
                  max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[list[str], int]:
    """The example's decoding (its prompt, greedy, its stop ids, its budget) for several
    sentences in one left-padded `model.generate` call: the same answers as `predict` one at a
    time up to float rounding, for scoring many adapter snapshots (time to F1) outside the
    clock. Not the example's speed: `predict` is what a user of the example runs."""
    stops = stop_ids(tokenizer)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer([prompt_text(tokenizer, t) for t in texts], return_tensors="pt",
                        padding=True).to(model.device)
    finally:
        tokenizer.padding_side = side
    generated = model.generate(enc.input_ids, attention_mask=enc.attention_mask,
                               max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                               pad_token_id=tokenizer.pad_token_id)[:, enc.input_ids.shape[1]:]
    answers, tokens = [], 0
    for row in generated.tolist():
        # as one at a time: up to and including the first stop id (a finished row is padded)
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        answers.append(tokenizer.decode(row[:end], skip_special_tokens=True))
        tokens += end
    return answers, tokens


def predict_all(model, tokenizer, texts: list[str], max_new_tokens: int = MAX_NEW_TOKENS,
                batch_size: int = 1) -> tuple[list[str], int, float]:
    """Answers for texts, one at a time (batch_size 1, the example's way) or `predict_batch`
    over similar-length groups; also the tokens generated and the seconds taken."""
    model.eval()
    answers, tokens = [""] * len(texts), 0
    start = time.perf_counter()
    if batch_size <= 1:
        for i, text in enumerate(texts):
            answers[i], n = predict(model, tokenizer, text, max_new_tokens)
            tokens += n
        return answers, tokens, time.perf_counter() - start
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for k in range(0, len(order), batch_size):
        group = order[k:k + batch_size]
        got, n = predict_batch(model, tokenizer, [texts[i] for i in group], max_new_tokens)
        for i, answer in zip(group, got):
            answers[i] = answer
        tokens += n
    return answers, tokens, time.perf_counter() - start


def read_raw_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
