"""What a deployment serves: learned policies from configured artifacts, mapped onto its experts;
a bad artifact never takes the service down, and a bad reload keeps the previous policy."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")
pytest.importorskip("torch", reason="the ml extra is not installed")

from core.config import PolicyConfig  # noqa: E402
from core.errors import ConfigError, ModelNotFoundError, PolicyError  # noqa: E402
from core.types import ExpertInfo, RouteRequest, RoutingOptions  # noqa: E402
from policies import create_policy  # noqa: E402
from policies.artifacts import WEIGHTS, save_artifact  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from policies.embeddings import configure_encoders  # noqa: E402
from router.lifecycle.policy_set import PolicySet  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402

EXPERTS = [
    ExpertInfo("tiny", input_usd_per_mtok=0.05, output_usd_per_mtok=0.1, params_b=0.135, prior_quality=0.4,
               release_date="2024-11-01", description="a tiny instruction-tuned chat model"),
    ExpertInfo("base", input_usd_per_mtok=0.1, output_usd_per_mtok=0.2, params_b=0.27, prior_quality=0.3,
               release_date="2025-08-14", description="a small base model"),
]
MAP = {"small": "tiny", "large": "base"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    configure_encoders(cache_dir=None)
    data = RoutingData.from_frame(make_frame(n_per_task=40, seed=2), name="synthetic")
    train = data.subset(data.rows_of("train"))
    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for name, params in {"coe": {"cv_folds": 3}, "tryage": {"cv_folds": 3, "alphas": (1.0, 10.0)},
                         "graphrouter": {"epochs": 15, "patience": 5, "hidden": 16}}.items():
        policy = create_policy(name, encoder="hashing", **params).fit(train)
        out[name] = save_artifact(policy, root / name, data=train)
    return out


def config(active="prior", **options) -> PolicyConfig:
    return PolicyConfig.model_validate({"active": active, "lambda": 0, "options": options})


def req(prompt="compute the sum of this integer equation", **options):
    return RouteRequest(prompt=prompt, prompt_tokens=20, max_completion_tokens=32, options=RoutingOptions(**options))


def test_names_lists_only_what_this_deployment_can_serve(artifacts):
    ps = PolicySet(config(coe={"artifact": str(artifacts["coe"]), "expert_map": MAP}), EXPERTS)
    names = ps.names()
    assert "oracle" not in names and "coe" in names
    assert not {"knn", "mlp", "mf", "tryage", "graphrouter"} & set(names)  # learned, no artifact configured
    assert "fixed" not in names  # needs an expert parameter
    assert {"prior", "random", "cheapest", "strongest", "best_single"} <= set(names)
    d = ps.get("coe").decide(req())
    assert d.policy == "coe" and d.policy_version.startswith("v1-") and set(d.scores) <= {"tiny", "base"}
    with pytest.raises(ModelNotFoundError, match="'knn' cannot be served.*set policy.options.knn.artifact"):
        ps.get("knn")
    with pytest.raises(ModelNotFoundError, match="unknown routing policy 'nope'"):
        ps.get("nope")
    with pytest.raises(ModelNotFoundError, match="unknown routing policy 'oracle'"):
        ps.get("oracle")


def test_relative_artifact_paths_resolve_against_the_root(artifacts):
    root = artifacts["coe"].parent.parent
    ps = PolicySet(config(coe={"artifact": "coe", "expert_map": MAP}), EXPERTS, root=root)
    assert "coe" in ps.names()


def test_a_broken_artifact_of_a_non_active_policy_does_not_stop_the_service(artifacts, tmp_path, caplog):
    broken = tmp_path / "broken"
    shutil.copytree(artifacts["tryage"], broken)
    (broken / WEIGHTS).write_bytes(b"garbage")
    ps = PolicySet(config(tryage={"artifact": str(broken), "expert_map": MAP},
                          mf={"artifact": str(tmp_path / "missing"), "expert_map": MAP}), EXPERTS)
    assert "tryage" not in ps.names() and "mf" not in ps.names() and ps.get("prior")
    status = {s["name"]: s for s in ps.status()}
    assert "corrupted" in status["tryage"]["error"] and "not found" in status["mf"]["error"]
    assert "routing policy tryage is not served" in caplog.text
    with pytest.raises(ModelNotFoundError, match="corrupted"):
        ps.get("tryage")


def test_a_broken_active_policy_fails_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="active routing policy 'knn' cannot be served.*not found"):
        PolicySet(config(active="knn", knn={"artifact": str(tmp_path / "missing"), "expert_map": {}}), EXPERTS)
    with pytest.raises(ConfigError, match="unknown active routing policy 'nope'"):
        PolicySet(config(active="nope"), EXPERTS)


def test_expert_map_is_required_when_the_models_are_not_the_experts(artifacts):
    ps = PolicySet(config(coe={"artifact": str(artifacts["coe"])}), EXPERTS)
    assert "coe" not in ps.names()
    assert "set policy.options.coe.expert_map" in {s["name"]: s for s in ps.status()}["coe"]["error"]
    # GraphRouter needs none: it scores every expert from its description, price and size
    ps = PolicySet(config(graphrouter={"artifact": str(artifacts["graphrouter"])}), EXPERTS)
    assert ps.get("graphrouter").expert_names == ["tiny", "base"]
    # a partial map: the mapped expert uses its model's node, the other its descriptor
    ps = PolicySet(config(graphrouter={"artifact": str(artifacts["graphrouter"]), "expert_map": {"small": "tiny"}}), EXPERTS)
    assert set(ps.get("graphrouter").decide(req()).scores) == {"tiny", "base"}
    # other learned policies: an unmapped expert is no candidate
    ps = PolicySet(config(coe={"artifact": str(artifacts["coe"]), "expert_map": {"small": "tiny"}}), EXPERTS)
    assert ps.get("coe").expert_names == ["tiny"]


def test_hyperparameters_do_not_belong_next_to_an_artifact(artifacts):
    ps = PolicySet(config(coe={"artifact": str(artifacts["coe"]), "expert_map": MAP, "C": 3}), EXPERTS)
    assert "belong to `expertmux train coe`" in {s["name"]: s for s in ps.status()}["coe"]["error"]


def test_reload_swaps_only_a_good_artifact(artifacts, tmp_path):
    root = tmp_path / "coe"
    shutil.copytree(artifacts["coe"], root / "v1")
    ps = PolicySet(config(coe={"artifact": str(root), "expert_map": MAP}), EXPERTS)
    before = ps.get("coe")
    # a corrupted new version: refused, the old one keeps serving
    shutil.copytree(root / "v1", root / "v2")
    (root / "v2" / WEIGHTS).write_bytes(b"not the weights")
    with pytest.raises(PolicyError, match="v2: weights.npz is corrupted"):
        ps.reload("coe")
    assert ps.get("coe") is before and ps.get("coe").decide(req()).expert in {"tiny", "base"}
    # a good one: swapped in
    shutil.rmtree(root / "v2")
    shutil.copytree(root / "v1", root / "v2")
    status = ps.reload("coe")
    assert status["servable"] and status["artifact"].endswith("v2") and ps.get("coe") is not before
    # an explicit path, and the policies that have nothing to reload
    assert ps.reload("coe", artifact=root / "v1")["artifact"].endswith("v1")
    with pytest.raises(PolicyError, match="learns nothing"):
        ps.reload("prior")
    with pytest.raises(PolicyError, match="holds policy 'coe', not 'tryage'"):
        ps.reload("tryage", artifact=root / "v1")


def test_pareto_front_through_the_policy_set(artifacts):
    ps = PolicySet(config(tryage={"artifact": str(artifacts["tryage"]), "expert_map": MAP}), EXPERTS)
    front = ps.pareto("tryage", req())
    assert front["policy"] == "tryage" and {e["expert"] for e in front["experts"]} == {"tiny", "base"}
    assert front["front"] and set(front["front"]) <= {"tiny", "base"} and front["chosen"] in front["front"]
    by = {e["expert"]: e for e in front["experts"]}
    assert by["tiny"]["cost_usd"] < by["base"]["cost_usd"] and by["base"]["release_date"] == "2025-08-14"
