"""pt/: torch.save files (zip + pickle) for the .pt reader tests, and pt/expected.json with their values."""
import os
from collections import OrderedDict

import torch

from refcommon import FIX, gen, save_json

PT_DIR = os.path.join(FIX, "pt")


def describe(t):
    st = t.untyped_storage()
    return {
        "dtype": str(t.dtype).replace("torch.", ""),
        "shape": list(t.shape),
        "stride": list(t.stride()),
        "storage_offset": t.storage_offset(),
        "storage_numel": st.nbytes() // t.element_size(),
        "contiguous": t.is_contiguous(),
        # values in row-major (logical) order; f16/bf16 given exactly as f32
        "values": t.float().flatten().tolist() if t.is_floating_point() else t.flatten().tolist(),
    }


def build():
    os.makedirs(PT_DIR, exist_ok=True)
    g = gen(501)
    files = OrderedDict()
    files["f32_5x3.pt"] = torch.randn(5, 3, generator=g)
    files["f16_4x6.pt"] = torch.randn(4, 6, generator=g).half()
    files["bf16_2x3.pt"] = torch.randn(2, 3, generator=g).bfloat16()
    big = torch.arange(40, dtype=torch.float32).reshape(10, 4) * 0.5 - 3.0
    files["view_offset_rows2to5_of_10x4.pt"] = big[2:5]  # saves all 40 elements, storage offset 8
    files["transposed_4x3.pt"] = torch.randn(3, 4, generator=g).t()  # stride (1, 4)
    files["f32_1d_7.pt"] = torch.randn(7, generator=g)
    files["i64_2x4.pt"] = torch.tensor([[0, 1, -2, 3], [2**40, -(2**40), 7, 50256]], dtype=torch.int64)
    files["f32_scalar.pt"] = torch.tensor(3.25)
    expected = {"tensors": {}, "state_dicts": {}}
    for name, t in files.items():
        torch.save(t, os.path.join(PT_DIR, name))
        back = torch.load(os.path.join(PT_DIR, name))
        assert torch.equal(back, t) and back.stride() == t.stride() and back.storage_offset() == t.storage_offset()
        expected["tensors"][name] = describe(t)

    # a state_dict with nested prefixes, a shared storage (tied weights) and a non-persistent-looking buffer
    w = torch.randn(6, 4, generator=g)
    sd = OrderedDict()
    sd["model.encoder.layer.0.weight"] = torch.randn(4, 4, generator=g)
    sd["model.encoder.layer.0.bias"] = torch.randn(4, generator=g)
    sd["model.encoder.layer.1.weight"] = torch.randn(4, 4, generator=g).half()
    sd["model.embed.weight"] = w
    sd["model.head.weight"] = w  # same storage, as GPT-2's lm_head/wte
    sd["model.buffer.steps"] = torch.tensor(12, dtype=torch.int64)
    sd["model.mask"] = torch.tril(torch.ones(3, 3, dtype=torch.uint8))
    torch.save(sd, os.path.join(PT_DIR, "state_dict_nested.pt"))
    expected["state_dicts"]["state_dict_nested.pt"] = {
        "keys": list(sd.keys()),
        "shared_storage": [["model.embed.weight", "model.head.weight"]],
        "tensors": {k: describe(v) for k, v in sd.items()},
    }
    save_json(os.path.join(PT_DIR, "expected.json"), expected)
    print(f"[pt] {len(files) + 1} files")
