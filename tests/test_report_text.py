"""No sentence of the report's sections compares, ranks or concludes unless a number computed from the results decides
it. A sentence whose typed text (its words outside the \\val macros) holds a comparing or direction word must hold a
macro of kind "sentence" (`gen_lib.report.MACRO_KINDS`: text the notebooks compute with a branch for each outcome), or
cite its source (\\cite), or be one of the few fixed method statements listed here. A number, an interval or a name
cannot turn a word typed around it ("above by -0.3"), so none of them counts. The notebooks' markdown follows the same
word list: it holds no computed text, so a comparing sentence there must be a listed method statement or cite its
source by name and year."""

import json
import re
from pathlib import Path

from gen_lib.report import MACRO_KINDS, macro_kind, numbers  # noqa: F401  (numbers declares the sections' kinds)

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ROOT / "report" / "sections"
COMPARING = re.compile(
    r"\b(better|worse|best|worst|higher|lower(?! bound)|outperform\w*|significant\w*|converg\w*|tight\w*|exceed\w*|faster|"
    r"slower|cop(y|ies)|beats?|ranks?|smaller|larger|more accurate|above|below|improve\w*|dominat\w*|rises?|rising|"
    r"falls?|falling|stable|stabl\w*|unstable|impossible|closer|smoother|sharper|cleaner|blurr\w*|"
    r"under-dispers\w*|over-dispers\w*|mislead\w*|inflated|overshoot\w*|too high|too low|hopeless|"
    r"usually|most likely|trades?|settles?|far better|far worse|roughly|about a third)\b", re.IGNORECASE)
VAL = re.compile(r"\\val\{([^}]*)\}")
# sentences that state a rule, a test or a place, not a result (matched by their opening words); this list must not
# grow (test_the_exempt_lists_do_not_grow)
METHOD = ("Two values are ranked by",  # Table 3's ranking rule
          "Every registered sampler",  # what the sampler tests require
          "\\inputtable{ddpm_steps}",  # "the grids above": a location
          "The dotted line marks")  # a figure caption, then the heading "whether they are copies"
# the notebooks' markdown: method statements that use a comparing word as a definition ("lower is better")
NOTEBOOK_METHOD = ("Mean ± std over seeds (nats per image, higher is better)",  # a definition
                   "FID and KID: lower is better",  # a definition
                   "Bits per dimension of the **same** dequantized",  # "lower is better": a definition
                   "* **DDPM, ancestral**",  # "an upper bound": a definition
                   "Models are ranked by `likelihood.order`")  # Table 3's ranking rule
CITATION = re.compile(r"\([A-Z][\w-]+( et al\.| and [A-Z]\w+)?,? \d{4}")  # "(Kingma and Dhariwal, 2018": markdown


def uncommented(text: str) -> str:
    """LaTeX text without its comments and its bibliography (titles are not claims)."""
    text = re.sub(r"\\begin\{thebibliography\}.*?\\end\{thebibliography\}", " ", text, flags=re.S)
    return re.sub(r"(?<!\\)%.*", "", text)


def sentences(text: str) -> list[str]:
    text = uncommented(text)
    return [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\\*])", text) if s.strip()]


def decided(sentence: str) -> bool:
    """Whether a sentence's comparing words are decided: none in its typed text, or a computed sentence macro in it,
    or a citation, or it is a listed method statement."""
    typed = VAL.sub(" ", sentence)
    return (not COMPARING.search(typed) or "\\cite{" in sentence or sentence.startswith(METHOD)
            or any(macro_kind(key) == "sentence" for key in VAL.findall(sentence)))


def markdown_decided(sentence: str) -> bool:
    """A question, a sentence with no comparing word, one that cites its source, or a listed method statement."""
    return (not COMPARING.search(sentence) or sentence.endswith("?") or bool(CITATION.search(sentence))
            or sentence.startswith(NOTEBOOK_METHOD))


def test_every_comparing_sentence_has_a_computed_sentence_behind_it():
    bare = [f"{p.name}: {s[:200]}" for p in sorted(SECTIONS.glob("*.tex")) for s in sentences(p.read_text())
            if not decided(s)]
    bare += [f"report.tex: {s[:200]}" for s in sentences((ROOT / "report" / "report.tex").read_text())
             if not decided(s)]
    assert not bare, "comparisons that no computed sentence decides:\n" + "\n".join(bare)


def test_every_macro_of_the_report_has_a_declared_kind():
    texts = [uncommented(p.read_text()) for p in [*SECTIONS.glob("*.tex"), ROOT / "report" / "report.tex"]]
    undeclared = sorted({k for t in texts for k in VAL.findall(t) if k.split(".")[0] != "meta"
                         and not any(k == p or ("*" in p and re.fullmatch(re.escape(p).replace(r"\*", ".*"), k))
                                     for p in MACRO_KINDS)})
    assert not undeclared, f"macros with no declared kind: {undeclared}"


def test_no_number_is_typed_by_hand_in_a_result():
    """Powers of ten and "tens to thousands" are results of some run: they come from a macro or not at all."""
    typed = [f"{p.name}: {s[:120]}" for p in sorted(SECTIONS.glob("*.tex")) for s in sentences(p.read_text())
             if re.search(r"10\^\{?\d|tens to thousands|in our runs", VAL.sub(" ", s))]
    assert not typed, "numbers typed by hand:\n" + "\n".join(typed)


def markdown_sentences(path: Path) -> list[str]:
    """The sentences of a notebook's markdown cells: per paragraph, heading and list item, display math left out."""
    cells = json.loads(path.read_text())["cells"]
    text = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"^(#+ .*)$", r"\1\n", text, flags=re.M)  # a heading is a block of its own
    blocks = re.split(r"\n\s*\n|\n(?=\* )", text)
    return [s for block in blocks for s in sentences(block.replace("%", "percent"))]


def test_every_comparing_sentence_of_the_notebooks_markdown_is_a_method_or_cites_its_source():
    bare = [f"{p.name}: {s[:200]}" for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
            for s in markdown_sentences(p) if not markdown_decided(s)]
    assert not bare, "comparisons in the notebooks' markdown:\n" + "\n".join(bare)


def test_the_exempt_lists_do_not_grow():
    assert len(METHOD) <= 4 and len(NOTEBOOK_METHOD) <= 5


def test_the_check_fails_on_planted_sentences():
    """A bare comparison, one whose only macro is a noun, one whose only macro is a number, all fail; a computed
    sentence and a citation pass."""
    planted = ["The flow has the best likelihood.",
               "The samples are smoother than the \\val{meta.items}.",
               "The IWAE bound lies above the ELBO by \\val{priors.iwaeelbo.list} nats.",
               "DDIM was \\val{ddpm.speedup} times faster.",
               "The estimate falls from \\val{quality.curve.real.lo} to \\val{quality.curve.real.hi}."]
    passing = ["The IWAE bound lies \\val{priors.iwaeelbo.side}.", "Of the priors, \\val{priors.best}.",
               "A lower temperature trades diversity for quality~\\cite{glow}.", "It is \\val{quality.fid.flow}."]
    assert [s for s in planted if decided(s)] == []
    assert all(decided(s) for s in passing)
    text = "The flow has the best likelihood. Its value is \\val{quality.fid.flow}, lower than \\val{meta.items}."
    assert [s for s in sentences(text) if not decided(s)] == [
        "The flow has the best likelihood.", "Its value is \\val{quality.fid.flow}, lower than \\val{meta.items}."]
    assert not markdown_decided("the IWAE bound never exceeds it.") and markdown_decided("(Burda et al., 2016) never.")


def test_macro_kinds_are_declared_and_the_default_decides_nothing():
    assert macro_kind("priors.best") == "sentence" and macro_kind("priors.gaussian.elbo") == "number"
    assert macro_kind("quality.fidc.flow") == "interval" and macro_kind("meta.items") == "name"
    assert macro_kind("nobody.declared.this") == "name"
