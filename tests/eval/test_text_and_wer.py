import jiwer
import pytest

from tts_bpeft.eval.asr import error_rates
from tts_bpeft.eval.text_norm import integer_to_words, normalize_text


def test_normalize_text_lowercases_drops_punctuation_and_spells_numbers():
    text = "Hello,  World! It's 1,234 dogs -- and 2.5 cats; twenty-one/7 \u201cquoted\u201d."
    assert normalize_text(text) == (
        "hello world its one thousand two hundred thirty four dogs "
        "and two point five cats twenty one seven quoted"
    )
    assert normalize_text("Room 42!", numbers_to_words=False) == "room 42"


@pytest.mark.parametrize(
    ("n", "words"),
    [(0, "zero"), (13, "thirteen"), (40, "forty"), (99, "ninety nine"), (100, "one hundred"),
     (1015, "one thousand fifteen"), (2_000_001, "two million one")],
)
def test_integer_to_words(n, words):
    assert integer_to_words(n) == words


def test_error_rates_hand_computed():
    # ref 5 words; hyp: "the" deleted, brown -> crown substituted, "high" inserted.
    rates = error_rates(["The quick brown fox jumps."], ["quick crown fox jumps high"])
    assert (rates.substitutions, rates.deletions, rates.insertions, rates.reference_words) == (1, 1, 1, 5)
    assert rates.wer == pytest.approx(3 / 5)
    # characters of "the quick brown fox jumps" (25): delete "the " (4), b -> c (1), insert " high" (5).
    assert rates.cer == pytest.approx(10 / 25)


def test_error_rates_equal_jiwer_on_normalised_text_and_pool_over_utterances():
    refs = ["I saw 3 cats.", "Go home now, Bob!", "A B C D"]
    hyps = ["i saw three bats", "go home bob", "a b x d e"]
    rates = error_rates(refs, hyps)
    norm_refs = ["i saw three cats", "go home now bob", "a b c d"]
    norm_hyps = ["i saw three bats", "go home bob", "a b x d e"]
    assert rates.wer == pytest.approx(jiwer.wer(norm_refs, norm_hyps))
    assert rates.cer == pytest.approx(jiwer.cer(norm_refs, norm_hyps))
    assert rates.wer == pytest.approx((1 + 1 + 2) / (4 + 4 + 4))
    assert error_rates(["Hello there."], ["hello there"]).wer == 0.0
    assert error_rates(["Hello there."], ["hello there"], normalize=False).wer == 1.0


def test_error_rates_rejects_empty_reference_and_length_mismatch():
    with pytest.raises(ValueError, match="reference 1 is empty"):
        error_rates(["ok", "?!"], ["ok", "x"])
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rates(["a", "b"], ["a"])
