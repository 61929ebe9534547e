"""The shipped accelerate configs go through accelerate's own launch-time checks on CPU: the
YAML is read into its ClusterConfig, merged into the launch arguments, and turned into the
environment the launched processes read (FSDP sharding strategy, wrap policy, DeepSpeed fields).
Neither a GPU nor the deepspeed package is needed for this; running them needs both."""

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
EXPECTED = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
            "deepspeed-zero2.yaml": "DEEPSPEED", "deepspeed-zero3.yaml": "DEEPSPEED"}


def launch_args(config: Path):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(
        ["--config_file", str(config), "-m", "nerft", "train", "CONFIG.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    return args, defaults


def test_every_shipped_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_and_launches_as_intended(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cluster = load_config_from_file(str(CONFIGS / name))
    assert cluster.distributed_type.value == EXPECTED[name]
    assert cluster.num_machines == 1 and cluster.num_processes == 2
    args, defaults = launch_args(CONFIGS / name)
    assert args.module and args.training_script == "nerft"  # `-m nerft train ...` kept
    if name.startswith("deepspeed"):
        from accelerate.utils.launch import prepare_deepspeed_cmd_env

        assert args.use_deepspeed
        # What `accelerate launch` sets before calling its DeepSpeed launcher.
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(args)
        stage = "2" if "zero2" in name else "3"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == stage
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    else:
        from accelerate.utils.launch import prepare_multi_gpu_env

        env = prepare_multi_gpu_env(args)
        if name == "fsdp.yaml":
            assert env["ACCELERATE_USE_FSDP"] == "true"
            assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
            # The wrapped layer class must exist in the Qwen2 models we train.
            from transformers.models.qwen2 import modeling_qwen2

            assert hasattr(modeling_qwen2, env["FSDP_TRANSFORMER_CLS_TO_WRAP"])
            assert env["FSDP_USE_ORIG_PARAMS"] == "true"  # needed with frozen + LoRA weights
