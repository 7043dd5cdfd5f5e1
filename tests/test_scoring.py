"""Explanation scores: delphi's embedding score offline, detection and fuzzing through a fake OpenAI server, stored
in Neuronpedia's ExplanationScore shape (and scoreV2), and `featuredb score`."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from fake_openai import fake_openai
from featuredb import FeatureStore
from featuredb.cli.root import cli
from featuredb.labels.chat_endpoint import ChatEndpoint
from featuredb.labels.embedding_score import EMBEDDING_MODEL_NAME, auroc, score_embedding
from featuredb.labels.llm_scoring import parse_predictions, score_with_llm
from featuredb.store.score_tables import EMBEDDING_TYPE, FUZZ_TYPE, RECALL_TYPE, score_id, scores_of, write_scores
from featuredb.store.schema import CURRENT_VERSION, EXPLANATION_SCORES_COLUMNS, migrate

MODEL = "topic-model"
SOURCE = "3-topic-tc"

# Feature i fires on its topic's words: each sentence's keyword is the peak; explanations name the topic.
# fixtures/scoring_topics.json: 8 topics (the planted explanations), each 6 words and 6 sentences with a {} for one.
TOPICS = {name: (t["words"], t["sentences"])
          for name, t in json.loads((Path(__file__).parent / "fixtures" / "scoring_topics.json").read_text()).items()}
NAMES = list(TOPICS)


def _tokens(sentence: str) -> list[str]:
    words = sentence.split(" ")
    return ["<|endoftext|>"] + [words[0]] + [" " + w for w in words[1:]]


def topic_store(db: Path) -> Path:
    """8 features, one per topic; 4 top + 2 interval examples each, peaking on the topic word; explanations of
    type `planted` (the topic) and `shuffled` (the next feature's topic)."""
    acts: dict[str, list] = {k: [] for k in ("modelId", "layer", "index", "tokens", "values", "maxValue",
                                              "maxValueTokenIndex", "binMin", "binMax", "binContains", "dataIndex")}
    for i, (words, sentences) in enumerate(TOPICS.values()):
        for j, (word, template) in enumerate(zip(words, sentences)):
            toks = _tokens(template.format(word))
            peak = next(k for k, t in enumerate(toks) if word in t)
            top = j < 4
            mx = (10.0 - j) if top else (3.0 - 0.5 * j + 2)
            vals = [0.0] * len(toks)
            vals[peak] = mx
            for row, v in zip(acts.values(), (MODEL, SOURCE, i, toks, vals, mx, peak, -1.0 if top else 1.0 + j,
                                              -1.0 if top else 4.0 + j, -1.0 if top else 0.5, f"{i}-{j}")):
                row.append(v)
    n = len(NAMES)
    exps = pl.DataFrame({"modelId": [MODEL] * 2 * n, "layer": [SOURCE] * 2 * n,
                         "index": list(range(n)) * 2, "typeName": ["planted"] * n + ["shuffled"] * n,
                         "description": NAMES + [NAMES[(i + 1) % n] for i in range(n)]})
    feats = pl.DataFrame({"modelId": [MODEL] * n, "layer": [SOURCE] * n, "index": list(range(n)),
                          "maxActApprox": [10.0] * n, "frac_nonzero": [0.01] * n})
    with FeatureStore(db) as store:
        store.upsert({"features": feats, "activations": pl.DataFrame(acts), "explanations": exps})
    return db


@pytest.fixture
def topics(tmp_path: Path) -> Path:
    return topic_store(tmp_path / "topics.duckdb")


def _values(store: FeatureStore, type_name: str, score_type: str = EMBEDDING_TYPE) -> dict[int, float]:
    return dict(store.con.execute(
        """SELECT e."index", s.value FROM explanation_scores s JOIN explanations e ON e.id = s."explanationId"
           WHERE e."typeName" = ? AND s."explanationScoreTypeName" = ?""", [type_name, score_type]).fetchall())


def test_auroc() -> None:
    import numpy as np

    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([1.0, 2.0]), np.array([3.0])) == 0.0


def test_embedding_score_prefers_the_planted_explanation(topics: Path) -> None:
    with FeatureStore(topics) as store:
        planted = score_embedding(store, model=MODEL, type_name="planted", progress=False)
        shuffled = score_embedding(store, model=MODEL, type_name="shuffled", progress=False)
        assert planted.explanations == shuffled.explanations == len(NAMES) and planted.skipped == 0
        p, s = _values(store, "planted"), _values(store, "shuffled")
    assert planted.mean_score > 0.9 and shuffled.mean_score < 0.6, (p, s)
    assert sum(p[i] > s[i] for i in p) >= len(p) - 1


def test_scores_are_stored_in_neuronpedia_shape_and_replaced(topics: Path) -> None:
    with FeatureStore(topics) as store:
        first = score_embedding(store, model=MODEL, progress=False)  # every type
        assert first.explanations == 2 * len(NAMES)
        cols = [r[0] for r in store.con.execute("DESCRIBE explanation_scores").fetchall()]
        assert cols == list(EXPLANATION_SCORES_COLUMNS) == [
            "id", "explanationId", "value", "explanationScoreTypeName", "explanationScoreModelName",
            "initiatedByUserId", "jsonDetails", "createdAt"]
        rows = store.con.execute('SELECT e.id, e."scoreV2", s.value, s.id, s."explanationScoreModelName", '
                                 's."initiatedByUserId", s."jsonDetails" FROM explanations e JOIN explanation_scores s '
                                 'ON s."explanationId" = e.id').fetchall()
        assert len(rows) == 2 * len(NAMES)
        for eid, v2, value, sid, model_name, user, details in rows:
            assert v2 == value and sid == score_id(eid, EMBEDDING_TYPE, EMBEDDING_MODEL_NAME)
            assert model_name == EMBEDDING_MODEL_NAME and user == "featuredb"
            d = json.loads(details)
            assert {"text", "distance", "similarity", "activations", "str_tokens"} <= set(d[0])
            assert sum(x["distance"] == -1 for x in d) == 5 and sum(x["distance"] != -1 for x in d) == 5
        score_embedding(store, model=MODEL, progress=False)  # again: replaced, not duplicated
        assert store.con.execute("SELECT count(*) FROM explanation_scores").fetchone()[0] == 2 * len(NAMES)
        ids = [r[0] for r in rows[:2]] + ["no-such-explanation"]
        got = scores_of(store, ids)
        assert got["no-such-explanation"] == [] and len(got[ids[0]]) == 1
        one = got[ids[0]][0]
        assert set(one) == set(EXPLANATION_SCORES_COLUMNS) and one["createdAt"].endswith("Z")
        assert one["explanationScoreTypeName"] == EMBEDDING_TYPE
        # Another scorer's score of the same explanation sits beside it; only the embedding score is scoreV2.
        write_scores(store, [{"explanationId": ids[0], "value": 0.25, "explanationScoreTypeName": RECALL_TYPE,
                              "explanationScoreModelName": "m", "jsonDetails": []}])
        write_scores(store, [{"explanationId": ids[0], "value": 0.75, "explanationScoreTypeName": RECALL_TYPE,
                              "explanationScoreModelName": "m", "jsonDetails": [], "initiatedByUserId": "me"}])
        got = scores_of(store, [ids[0]])[ids[0]]
        assert [(s["explanationScoreTypeName"], s["value"], s["initiatedByUserId"]) for s in got] == [
            (EMBEDDING_TYPE, one["value"], "featuredb"), (RECALL_TYPE, 0.75, "me")]
        assert store.con.execute('SELECT "scoreV2" FROM explanations WHERE id = ?', [ids[0]]).fetchone()[0] \
            == one["value"]
        # Scores of explanations that are gone are dropped with the next write.
        store.con.execute("DELETE FROM explanations WHERE id = ?", [ids[0]])
        write_scores(store, [{"explanationId": ids[1], "value": 0.5, "explanationScoreTypeName": FUZZ_TYPE,
                              "explanationScoreModelName": "m"}])
        assert scores_of(store, [ids[0]])[ids[0]] == []


def test_older_store_migrates_to_explanation_scores(tmp_path: Path) -> None:
    import duckdb

    db = tmp_path / "v5.duckdb"
    con = duckdb.connect(str(db))
    migrate(con, str(db), target=5)
    con.close()
    with FeatureStore(db) as store:
        assert store.info()["schema_version"] == CURRENT_VERSION >= 6
        assert store.con.execute("SELECT count(*) FROM explanation_scores").fetchone()[0] == 0


# -- detection and fuzzing against a fake OpenAI server ----------------------------------------------------------

def _keywords(explanation: str) -> set[str]:
    return set(TOPICS[explanation][0])


def _examples(prompt: str) -> list[str]:
    return re.findall(r"^Example \d+: (.*)$", prompt, flags=re.M)


def perfect_judge(req) -> str:  # type: ignore[no-untyped-def]
    prompt = req.last_user
    explanation = re.search(r"Latent explanation: (.*)", prompt).group(1)
    words = _keywords(explanation)
    answers = []
    for ex in _examples(prompt):
        marked = re.findall(r"<<(.*?)>>", ex)
        if marked:  # fuzzing: every marked span must be a topic word
            answers.append(int(all(m.strip(" .,") in words for m in marked)))
        else:  # detection: the text mentions a topic word
            answers.append(int(any(w in ex for w in words)))
    return json.dumps(answers)


def random_judge(seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    return lambda req: json.dumps([rng.randint(0, 1) for _ in _examples(req.last_user)])


def test_detection_and_fuzzing_with_a_perfect_judge(topics: Path) -> None:
    with fake_openai(perfect_judge) as server, FeatureStore(topics) as store:
        out = score_with_llm(store, ChatEndpoint(server.url, "judge-model", concurrency=4), model=MODEL,
                             type_name="planted", progress=False)
        by_kind = {s.kind: s for s in out}
        assert by_kind["detection"].explanations == by_kind["fuzz"].explanations == len(NAMES)
        assert by_kind["detection"].mean_score == 1.0 and by_kind["fuzz"].mean_score == 1.0
        assert set(_values(store, "planted", RECALL_TYPE).values()) == {1.0}
        row = store.con.execute('SELECT "explanationScoreModelName", "jsonDetails" FROM explanation_scores '
                                'WHERE "explanationScoreTypeName" = ? LIMIT 1', [FUZZ_TYPE]).fetchone()
        assert row[0] == "judge-model"
        d = json.loads(row[1])
        assert {"text", "distance", "ground_truth", "prediction", "highlighted", "correct", "probability",
                "activations", "str_tokens"} <= set(d[0])
        assert all(x["highlighted"] and x["correct"] for x in d) and "<<" in d[0]["text"]
        # the shuffled (wrong) explanations score low with the same judge
        out = score_with_llm(store, ChatEndpoint(server.url, "judge-model"), model=MODEL, type_name="shuffled",
                             kinds=("detection",), progress=False)
        assert out[0].mean_score <= 0.6
        # 8 features x 10 examples / 5 per request, per kind, per type
        assert len(server.chat_requests) == 8 * 2 * 2 + 8 * 2


def test_detection_and_fuzzing_with_a_random_judge(topics: Path) -> None:
    with fake_openai(random_judge(7)) as server, FeatureStore(topics) as store:
        out = score_with_llm(store, ChatEndpoint(server.url, "coin", concurrency=1), model=MODEL, progress=False)
    for s in out:
        assert s.explanations == 2 * len(NAMES) and 0.35 <= s.mean_score <= 0.65, s


def test_unusable_replies_count_as_wrong(topics: Path) -> None:
    with fake_openai(lambda req: "I cannot tell.") as server, FeatureStore(topics) as store:
        out = score_with_llm(store, ChatEndpoint(server.url, "mute"), model=MODEL, type_name="planted",
                             kinds=("detection",), progress=False)
        assert out[0].mean_score == 0.0
        d = json.loads(store.con.execute('SELECT "jsonDetails" FROM explanation_scores LIMIT 1').fetchone()[0])
        assert {x["prediction"] for x in d} == {-1}


def test_parse_predictions() -> None:
    assert parse_predictions("[1,0,1]", 3) == [1, 0, 1]
    assert parse_predictions("Answer: [True, False]", 2) == [1, 0]
    assert parse_predictions("[1,0] then [1,1,0]", 3) == [1, 1, 0]
    assert parse_predictions("[1, 2, 0]", 3) is None and parse_predictions("no list", 1) is None


# -- the command -------------------------------------------------------------------------------------------------

def test_score_command_embedding_only(topics: Path) -> None:
    r = CliRunner().invoke(cli, ["score", "--model", MODEL, "--type", "planted", "--db", str(topics), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert [s["type"] for s in out["scores"]] == [EMBEDDING_TYPE]
    assert out["scores"][0]["explanations"] == len(NAMES) and out["scores"][0]["mean"] > 0.9
    assert "need --endpoint" in out["note"]
    r = CliRunner().invoke(cli, ["score", "--model", MODEL, "--type", "planted", "--db", str(topics)])
    assert r.exit_code == 0 and "detection and fuzzing need --endpoint" in r.output


def test_score_command_with_endpoint(topics: Path) -> None:
    with fake_openai(perfect_judge) as server:
        r = CliRunner().invoke(cli, ["score", "--model", MODEL, "--source", SOURCE, "--type", "planted",
                                     "--endpoint", server.url, "--scorer-model", "judge", "--concurrency", "2",
                                     "--kinds", "detection,fuzz", "--db", str(topics), "--json"])
    assert r.exit_code == 0, r.output
    got = {s["type"]: s for s in json.loads(r.stdout)["scores"]}
    assert set(got) == {RECALL_TYPE, FUZZ_TYPE} and got[RECALL_TYPE]["mean"] == 1.0
    assert got[FUZZ_TYPE]["model"] == "judge"


@pytest.mark.parametrize("args, message", [
    (["--model", "nope"], "model 'nope' is not in"),
    (["--model", MODEL, "--source", "9-nope"], "no explanations"),
    (["--model", MODEL, "--type", "nope"], "no explanations of type 'nope'"),
    (["--model", MODEL, "--kinds", "embedding,telepathy"], "unknown score kind 'telepathy'"),
    (["--model", MODEL, "--kinds", "detection"], "need --endpoint"),
    (["--model", MODEL, "--endpoint", "http://127.0.0.1:9/v1"], "--scorer-model"),
    (["--model", MODEL, "--endpoint", "ftp://x", "--scorer-model", "m"], "bad endpoint URL"),
])
def test_score_command_bad_input(topics: Path, args: list[str], message: str) -> None:
    r = CliRunner().invoke(cli, ["score", *args, "--db", str(topics)])
    assert r.exit_code == 1, r.output
    err = r.stderr.strip()
    assert err.startswith("featuredb: error:") and message in err and "\n" not in err, err


def test_score_command_missing_store(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["score", "--model", MODEL, "--db", str(tmp_path / "none.duckdb")])
    assert r.exit_code == 1 and r.stderr.startswith("featuredb: error:")


# -- the real default model ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedding_score_on_the_default_model(default_store: Path, tmp_path: Path) -> None:
    """Each feature's baseline label scores higher than another feature's baseline label (mean AUROC)."""
    db = tmp_path / "store.duckdb"
    shutil.copy(default_store, db)
    with FeatureStore(db) as store:
        model = store.con.execute('SELECT DISTINCT "modelId" FROM explanations').fetchone()[0]
        rows = store.con.execute(
            """SELECT "layer", "index", description FROM explanations WHERE "typeName" = 'featuredb-baseline'
               ORDER BY "layer", "index" """).fetchall()
        rng = random.Random(0)
        by_source: dict[str, list[tuple[int, str]]] = {}
        for layer, index, desc in rows:
            by_source.setdefault(layer, []).append((index, desc))
        shuffled = {"modelId": [], "layer": [], "index": [], "description": [], "typeName": []}
        for layer, items in by_source.items():
            descs = [d for _, d in items]
            rng.shuffle(descs)
            for (index, own), other in zip(items, descs):
                if other != own:
                    for k, v in zip(shuffled, (model, layer, index, other, "shuffled")):
                        shuffled[k].append(v)
        store.upsert({"explanations": pl.DataFrame(shuffled)})
        planted = score_embedding(store, model=model, type_name="featuredb-baseline", progress=False)
        wrong = score_embedding(store, model=model, type_name="shuffled", progress=False)
    print(f"default model: {planted.explanations} baseline labels mean AUROC {planted.mean_score:.3f} in "
          f"{planted.seconds:.1f} s; shuffled {wrong.mean_score:.3f}")
    assert planted.explanations > 1000 and planted.mean_score > wrong.mean_score + 0.05
