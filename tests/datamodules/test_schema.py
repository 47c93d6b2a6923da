import copy

import pytest

from datamodules.common.schema import SampleError, validate_sample


def good_sample():
    return {
        "schema": "longwatch/v1", "key": "train-000012", "source": "synthetic", "duration": 60.0, "num_frames": 60,
        "segments": [{"start": 0.0, "end": 20.0, "caption": "a red circle", "related": [0, 2]},
                     {"start": 20, "end": 40.0, "caption": "a blue square", "related": [1]},
                     {"start": 40.0, "end": 60.0, "caption": "a red circle", "related": [0, 2]}],
        "qa": [{"question": "What colour?", "options": ["red", "blue", "green", "white"], "answer": 0,
                "answer_text": "red", "segments": [0, 2]},
               {"question": "Describe it.", "options": [], "answer": -1, "answer_text": "a circle", "segments": []}],
        "streaming": [{"query": "tell me when a red circle appears", "spans": [[0.0, 3.0], [40, 43.0]]}],
        "meta": {"anything": [1, 2]},
    }


def test_good_sample_passes_and_is_normalised():
    out = validate_sample(good_sample(), "train/shard-000000.tar:train-000012", key="train-000012")
    assert out["segments"][1]["start"] == 20.0 and isinstance(out["segments"][1]["start"], float)
    assert out["streaming"][0]["spans"][1] == [40.0, 43.0]
    assert out["qa"][0]["segments"] == [0, 2]


def test_empty_lists_are_allowed():
    sample = good_sample()
    sample.update(segments=[], qa=[], streaming=[])
    assert validate_sample(sample, "x.tar:k")["segments"] == []


def _set(path, value):
    def mutate(sample):
        target = sample
        for part in path[:-1]:
            target = target[part]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


BAD = [
    (_set(["duration"], KeyError), "duration", "missing"),
    (_set(["duration"], "60"), "duration", "'60'"),
    (_set(["duration"], -1.0), "duration", "-1.0"),
    (_set(["num_frames"], 61), "num_frames", "61"),
    (_set(["num_frames"], 60.0), "num_frames", "60.0"),
    (_set(["schema"], "longwatch/v0"), "schema", "longwatch/v0"),
    (_set(["key"], "train.12"), "key", "train.12"),
    (_set(["key"], "other-key"), "key", "other-key"),
    (_set(["extra"], 1), "extra", "unknown field"),
    (_set(["segments", 1, "start"], 10.0), "segments[1].start", "10.0"),
    (_set(["segments", 2, "end"], 61.0), "segments[2]", "61.0"),
    (_set(["segments", 1, "end"], 20.0), "segments[1]", "20.0"),
    (_set(["segments", 1, "related"], [0]), "segments[1].related", "own id 1"),
    (_set(["segments", 1, "related"], [1, 7]), "segments[1].related[1]", "7"),
    (_set(["segments", 0, "caption"], None), "segments[0].caption", "None"),
    (_set(["qa", 0, "answer"], 4), "qa[0].answer", "4"),
    (_set(["qa", 0, "answer"], True), "qa[0].answer", "True"),
    (_set(["qa", 0, "answer_text"], "blue"), "qa[0].answer_text", "'blue'"),
    (_set(["qa", 0, "segments"], [3]), "qa[0].segments[0]", "3"),
    (_set(["qa", 1, "answer"], 0), "qa[1].answer", "-1"),
    (_set(["streaming", 0, "spans"], [[5.0, 3.0]]), "streaming[0].spans[0]", "5.0"),
    (_set(["streaming", 0, "spans"], [[40.0, 43.0], [0.0, 3.0]]), "streaming[0].spans[1]", "time order"),
    (_set(["streaming", 0, "spans"], [[1.0, 2.0, 3.0]]), "streaming[0].spans[0]", "[1.0, 2.0, 3.0]"),
    (_set(["streaming", 0, "spans"], [[0.0, 70.0]]), "streaming[0].spans[0]", "70.0"),
    (_set(["meta"], []), "meta", "list"),
]


@pytest.mark.parametrize("mutate, field, shown", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_sample_names_shard_key_field_and_value(mutate, field, shown):
    sample = copy.deepcopy(good_sample())
    mutate(sample)
    where = "train/shard-000003.tar:train-000012"
    with pytest.raises(SampleError) as info:
        validate_sample(sample, where, key="train-000012")
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(where) and f"'{field}'" in message and shown in message, message


def test_sample_error_pickles():
    import pickle

    error = pickle.loads(pickle.dumps(SampleError("a.tar:k", "qa[0].answer", "bad")))
    assert (error.where, error.field, str(error)) == ("a.tar:k", "qa[0].answer", "a.tar:k: field 'qa[0].answer': bad")
