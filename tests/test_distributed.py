"""messi.distributed: alone every helper is a no-op; under torchrun (2 CPU processes, gloo) the
main process's JSON and tensors of every dtype reach the other process bit for bit."""

import subprocess
import sys
import textwrap

import torch
from torch import nn

from messi import distributed


def test_alone_every_helper_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    distributed.init()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert not distributed.active()
    value = {"k": 3, "list": [1.5, None]}
    assert distributed.broadcast_json(value) is value
    assert distributed.main_answers(lambda: 5) == 5
    layer = nn.Linear(3, 2)
    before = {n: t.clone() for n, t in layer.state_dict().items()}
    assert distributed.broadcast_module(layer) is layer
    assert all(torch.equal(before[n], t) for n, t in layer.state_dict().items())


def test_rank_comes_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    assert distributed.world_size() == 4 and distributed.rank() == 3 and not distributed.is_main()


SCRIPT = """
import json, sys
import torch
from torch import nn
from messi import distributed

distributed.init()
assert distributed.active(), "two processes must form a process group"
r = distributed.rank()

class M(nn.Module):
    def __init__(self, fill):
        super().__init__()
        self.w = nn.Parameter(torch.full((3, 5), float(fill)))
        self.h = nn.Parameter(torch.full((4,), float(fill), dtype=torch.bfloat16))
        self.register_buffer("ids", torch.full((7,), fill, dtype=torch.int16))
        self.register_buffer("flag", torch.tensor(fill % 2 == 0))

m = M(10 + r)  # different on each process
with torch.no_grad():
    m.w[0, 0] = 1 / 3 + r  # a value that is not exact in any short format
distributed.broadcast_module(m)
got = distributed.broadcast_json({"from": r, "text": "é ✓", "n": [1, 2.5]} if r == 0 else "ignored")
state = {n: t.float().flatten().tolist() for n, t in m.state_dict().items()}
asked = []
answer = distributed.main_answers(lambda: asked.append(r) or {"rank": r})
json.dump({"rank": r, "json": got, "state": state, "w00": m.w[0, 0].item(), "answer": answer, "asked": asked},
          open(sys.argv[1] + f"/rank{r}.json", "w"))
"""


def test_two_processes_receive_the_main_process_state(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r1["json"] == {"from": 0, "text": "é ✓", "n": [1, 2.5]}
    assert r1["state"] == r0["state"]  # every dtype: float32, bfloat16, int16, bool
    assert r1["w00"] == r0["w00"] == torch.tensor(1 / 3).item()
    assert r0["state"]["ids"] == [10.0] * 7
    assert r0["answer"] == r1["answer"] == {"rank": 0} and r0["asked"] == [0] and r1["asked"] == []
