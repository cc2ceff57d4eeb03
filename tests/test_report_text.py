"""No sentence of the report's sections compares, ranks or concludes without a number computed from the results
behind it: a sentence with a comparing word must hold a \\val macro (the notebooks write every macro from the
results, with a branch for each outcome), or be one of the few listed here that describe a method or a location."""

import re
from pathlib import Path

SECTIONS = Path(__file__).resolve().parent.parent / "report" / "sections"
COMPARING = re.compile(r"\b(better|worse|best|worst|higher|lower|outperform\w*|significant\w*|converge[sd]?|tight\w*|"
                       r"exceed\w*|faster|slower|cop(y|ies)|beats?|ranks?|smaller|larger|more accurate|above|below|"
                       r"improve\w*|dominat\w*)\b", re.IGNORECASE)
# sentences that state a rule or a place, not a result (matched by their opening words)
METHOD = ("Two exact values are ranked by",  # Table 3's ranking rule
          "Every registered sampler",  # what the sampler tests require
          "\\inputtable{ddpm_steps}",  # "the grids above": a location
          "The dotted line marks")  # a figure caption, then the heading "whether they are copies"


def sentences(text: str) -> list[str]:
    text = re.sub(r"(?<!\\)%.*", "", text)  # LaTeX comments
    return [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\\])", text) if s.strip()]


def test_every_comparing_sentence_has_a_computed_number_behind_it():
    bare = [f"{p.name}: {s[:160]}" for p in sorted(SECTIONS.glob("*.tex")) for s in sentences(p.read_text())
            if COMPARING.search(s) and "\\val{" not in s and not s.startswith(METHOD)]
    assert not bare, "comparisons with no macro behind them:\n" + "\n".join(bare)


def test_the_check_can_fail():
    text = "The flow has the best likelihood. Its value is \\val{quality.bpd.flow.exact}, lower than the DDPM's."
    flagged = [s for s in sentences(text) if COMPARING.search(s) and "\\val{" not in s]
    assert flagged == ["The flow has the best likelihood."]
