"""Save tiny multimodal configs (language model in text_config) with the running
transformers, as its config classes write them, into tests/data/wrappers/<name>-<version>.json.

    python tests/data/wrapper_configs.py tests/data/wrappers

Run once with transformers 4.57.1 (.venv-tf4.57.1) and once with 5.x (.venv); the files are
checked in and read by tests/test_families.py. Needs no torch.
"""

import json
import sys
import tempfile
from pathlib import Path

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "head_dim": 16}


def configs(major: int) -> dict:
    from transformers import AutoConfig

    def rope(theta=None, scaling=None, nested=False):
        """The RoPE arguments the running release takes: 4.x legacy keys or 5.x rope_parameters."""
        if major < 5:
            return {**({"rope_theta": theta} if theta else {}), **({"rope_scaling": scaling} if scaling else {})}
        params = {"rope_type": "default", **(scaling or {}), **({"rope_theta": theta} if theta else {})}
        if nested:
            params = {"full_attention": params, "sliding_attention": {"rope_type": "default"}}
        return {"rope_parameters": params}

    gemma_text = {**TEXT, "sliding_window": 16, "layer_types": ["sliding_attention", "full_attention"]}
    return {
        # Gemma 3 4B's shape: linear x8 on the global layers, theta and window left to the class.
        "gemma3": AutoConfig.for_model("gemma3", text_config={
            **gemma_text, **rope(scaling={"rope_type": "linear", "factor": 8.0}, nested=True)}),
        "gemma3_unscaled": AutoConfig.for_model("gemma3", text_config=dict(gemma_text)),
        "mistral3": AutoConfig.for_model("mistral3", text_config={
            "model_type": "mistral", **TEXT, "max_position_embeddings": 131072, **rope(theta=1e9)}),
        "llava": AutoConfig.for_model("llava", text_config={"model_type": "llama", **TEXT,
                                                             "max_position_embeddings": 4096}),
        "idefics3": AutoConfig.for_model("idefics3", text_config={"model_type": "llama", **TEXT,
                                                                   "max_position_embeddings": 8192,
                                                                   **rope(theta=100000.0)}),
        "smolvlm": AutoConfig.for_model("smolvlm", text_config={"model_type": "llama", **TEXT,
                                                                 "max_position_embeddings": 8192,
                                                                 **rope(theta=100000.0)}),
        "qwen2_vl": AutoConfig.for_model("qwen2_vl", text_config={**TEXT, **rope(
            theta=1e6, scaling={"rope_type": "default", "mrope_section": [2, 3, 3]})}),
    }


def main(directory: Path) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    version = transformers.__version__
    directory.mkdir(parents=True, exist_ok=True)
    for name, config in configs(int(version.split(".")[0])).items():
        with tempfile.TemporaryDirectory() as saved:
            config.save_pretrained(saved)
            text = json.loads((Path(saved) / "config.json").read_text())
        text.pop("transformers_version", None)
        (directory / f"{name}-{version}.json").write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
