"""Best F2 of the unpruned and both pruned checkpoints (fp32 ONNX) on ood_test; writes ood_test_pruned.json."""

import json
import logging

logging.basicConfig(level=logging.WARNING)
from export import checks
from export.onnx_export import export_onnx
from export.runners import onnx_runner
from export.source import load_source
from train.config import config_from_dict
from train.data import ood_records

src = load_source("models/generalize/best.ckpt")
cfg = config_from_dict(src.info["train_config"])
cfg.data.ood_root = "/work/artifacts/ood_test"
cfg.data.ood_limit = None
test = ood_records(cfg)
print(len(test))
out = {}
for name, ck in (
    ("unpruned", "models/generalize/best.ckpt"),
    ("round1", "/work/artifacts/prune/pruned.ckpt"),
    ("round2", "/work/artifacts/prune2/pruned.ckpt"),
):
    m = load_source(ck).model
    f = export_onnx(m, f"/tmp/{name}.onnx", 1024, 576)
    r = onnx_runner(f, 2)
    p, t = checks.predict(r, test, 1024, 576)
    a = checks.accuracy(p, t).to_dict()
    out[name] = {k: a[k] for k in ("best_f2", "best_threshold", "map50")}
    print(name, out[name], flush=True)
json.dump(out, open("/work/artifacts/ood_test_pruned.json", "w"), indent=2)
