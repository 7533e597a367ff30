"""``maskc check`` reports every error of a file (issue 15): recovery per top-level item,
suggestions for undefined names, how to declare a runtime input, unclosed brackets where
they open. ``maskc.compile`` still raises the first error, at the same place."""

from __future__ import annotations

import re

import pytest

import maskc
from maskc.cli import main
from maskc.frontend.report import check_all

BAD = """\
mask a = windw(4)
mask b = same(doc)
mask c = causal & (window(3)
mask d = sink(4)
mask e = prefx(3) | causal
"""


def located(errors) -> list[tuple[int, int, str]]:
    return [(e.line, e.column, e.message) for e in errors]


def assert_shown(err: maskc.MaskError, source: str) -> None:
    """The message shows the error's own line with the caret under its column, and nothing
    of maskc's insides."""
    head, shown, caret = str(err).split("\n")
    assert shown == "    " + source.split("\n")[err.line - 1], str(err)
    assert caret.index("^") - 4 == err.column - 1, str(err)
    for leak in ("maskc/", ".py", "lark", "Traceback", "Unchecked"):
        assert leak not in head, str(err)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- every error, in order

def test_every_error_of_the_issue_example():
    errors = check_all(BAD, "bad.mask")
    assert located(errors) == [
        (1, 10, "undefined name 'windw'; did you mean 'window'?"),
        (2, 15, "undefined name 'doc' (declare it as an input: mask b(input doc) = ...)"),
        (3, 19, "'(' is never closed"),
        (5, 10, "undefined name 'prefx'; did you mean 'prefix'?"),
    ]
    assert [type(e) for e in errors] == [maskc.MaskNameError, maskc.MaskNameError,
                                         maskc.MaskSyntaxError, maskc.MaskNameError]
    for err in errors:
        assert str(err).startswith(f"bad.mask:{err.line}:{err.column}: error: ")
        assert_shown(err, BAD)


def test_several_syntax_errors_each_at_its_place():
    source = ("# header\n"
              "mask a = causal &&& window(3)\n"
              "let w = 4\n"
              "mask b =\n"
              "    window(w) @ causal\n"
              "mask c = causal  mask d = window(3, dilation = )\n"   # two items on one line
              "\tmask e = heads { 0: causal _: causal }\n"
              "mask f = causal & window(w)\n")
    assert located(check_all(source)) == [
        (2, 18, "unexpected '&'; expected '(', '-', '[', 'false', 'float', 'heads', "
                "'true', 'where', ..."),
        (5, 15, "unexpected character '@'"),
        (6, 48, "unexpected ')'; expected '(', '-', '[', 'false', 'float', 'heads', "
                "'true', 'where', ..."),
        (7, 29, "unexpected '_'; expected '%', '&', '(', '*', '+', ',', '-', '.', ..."),
    ]
    for err in check_all(source):
        assert_shown(err, source)


def test_an_item_cut_short_is_reported_at_the_next_item_as_compile_does():
    source = "mask a = causal &\nmask b = window(-1)\nmask c = causal |\n"
    errors = check_all(source)
    assert located(errors) == [
        (2, 1, "unexpected 'mask'; expected '(', '-', '[', 'false', 'float', 'heads', "
               "'true', 'where', ..."),
        (2, 17, "the window radius must be >= 0, got -1"),
        (3, 18, "unexpected end of input; expected '(', '-', '[', 'false', 'float', "
                "'heads', 'true', 'where', ..."),
    ]
    with pytest.raises(maskc.MaskSyntaxError) as info:
        maskc.compile(source)
    assert str(info.value) == str(errors[0])


def test_a_semantic_error_does_not_stop_the_next_masks():
    source = ("mask a = window(-1)\n"
              "mask b = causal & chunk(0)\n"
              "mask c(w = 4) = causal & w\n"
              "mask ok = causal\n"
              "mask d = window(3, radius = 2)\n")
    assert located(check_all(source)) == [
        (1, 17, "the window radius must be >= 0, got -1"),
        (2, 25, "the chunk size must be >= 1, got 0"),
        (3, 26, "'&' combines masks, got integer"),
        (5, 20, "window() has no parameter 'radius'; its parameters are: r, before, after, "
                "dilation"),
    ]


def test_a_clean_mask_after_a_broken_one_reports_just_the_broken_one():
    source = "mask a = causal & (window(3) | sink(2)\n\nmask b = causal & window(3)\n"
    assert located(check_all(source)) == [(1, 19, "'(' is never closed")]
    assert located(check_all("mask a = window(-2)\nmask b = causal\n")) == \
        [(1, 17, "the window radius must be >= 0, got -2")]


def test_uses_of_a_broken_item_are_not_errors_of_their_own():
    source = ("let w = (causal\n"              # broken: its name still counts as defined
              "mask a = w & sink(2)\n"
              "mask b = causal | w\n"
              "let f(x) = window(x) |\n"         # broken macro, cut short by the next item
              "mask c = f(3)\n"
              "mask d = sink(-1)\n")
    assert located(check_all(source)) == [
        (1, 9, "'(' is never closed"),
        (5, 1, "unexpected 'mask'; expected '(', '-', '[', 'false', 'float', 'heads', "
               "'true', 'where', ..."),
        (6, 15, "the number of sink tokens must be >= 0, got -1"),
    ]
    # nor are uses of a builtin a `let` failed to redefine
    source = "let window = causal\nmask m = window\n"
    assert located(check_all(source)) == \
        [(1, 5, "'window' is a reserved name and cannot be redefined")]


def test_an_error_inside_a_macro_is_reported_once():
    source = "let f = window(-1)\nmask a = f\nmask b = causal & f\nmask c = sink(-1)\n"
    errors = check_all(source)
    assert located(errors) == [
        (1, 16, "the window radius must be >= 0, got -1 (in 'f' used at line 2, column 10)"),
        (4, 15, "the number of sink tokens must be >= 0, got -1"),
    ]


def test_duplicates_and_missing_masks():
    source = "mask a = causal\nmask a = window(2)\nmask b = sink(-1)\n"
    assert located(check_all(source)) == [
        (2, 6, "'a' is defined twice"),
        (3, 15, "the number of sink tokens must be >= 0, got -1"),
    ]
    assert located(check_all("# only a comment\n")) == \
        [(1, 1, "the file defines no mask (add 'mask NAME = ...')")]
    assert check_all("mask m = causal\n") == []


def test_parameters_bind_where_declared_and_missing_ones_skip_the_mask():
    source = "mask a(w) = window(w)\nmask b(w = 2, n = 1) = window(w) | sink(n)\n"
    assert check_all(source) == []          # a: w has no default, so it is not checked
    assert located(check_all(source, "<string>", w=-1)) == [
        (1, 20, "the window radius must be >= 0, got -1"),
        (2, 31, "the window radius must be >= 0, got -1"),
    ]


# ---------------------------------------------------------------- suggestions and hints

@pytest.mark.parametrize("source, message", [
    ("mask m = causal & windw(3)", "undefined name 'windw'; did you mean 'window'?"),
    ("mask m = casual", "undefined name 'casual'; did you mean 'causal'?"),
    ("let local = window(4)\nmask m = causal & locl",
     "undefined name 'locl'; did you mean 'local'?"),
    ("mask m(width = 4) = window(widht)", "undefined name 'widht'; did you mean 'width'?"),
    ("mask base = causal\nmask m = bse", "undefined name 'bse'; did you mean 'base'?"),
    ("mask m(input docs) = same(doc)", "undefined name 'doc'; did you mean 'docs'?"),
    ("mask m = causal & zzz", "undefined name 'zzz'"),
])
def test_undefined_names_get_the_closest_name_in_scope(source, message):
    (err,) = check_all(source)
    assert err.message == message
    with pytest.raises(maskc.MaskNameError) as info:
        maskc.compile(source, name="m")
    assert info.value.message == message


@pytest.mark.parametrize("source, column, message", [
    ("mask b = same(doc)", 15, "mask b(input doc) = ..."),
    ("mask b = within(doc, causal)", 17, "mask b(input doc) = ..."),
    ("mask b = blocks(64, select(x))", 28, "mask b(input x) = ..."),
    ("mask b(w = 3) = causal & keys(x)", 31, "mask b(..., input x) = ..."),
    ("mask b = diagonals(x = idx)", 24, "mask b(input idx) = ..."),
    ("mask b = causal with s + bias[h]", 26, "mask b(input bias) = ..."),
    ("mask b(input x) = all with alibi(slopes)", 34, "mask b(..., input slopes) = ..."),
])
def test_a_missing_runtime_input_says_how_to_declare_it(source, column, message):
    (err,) = check_all(source)
    name = re.search(r"undefined name '(\w+)'", err.message).group(1)
    assert err.message == f"undefined name '{name}' (declare it as an input: {message})"
    assert (err.line, err.column) == (1, column)
    with pytest.raises(maskc.MaskNameError) as info:
        maskc.compile(source)
    assert info.value.message == err.message


def test_a_macro_is_told_to_take_the_name_as_a_parameter():
    source = "let docs_causal = causal & same(doc)\nmask m(input doc) = docs_causal\n"
    (err,) = check_all(source)
    assert (err.line, err.column) == (1, 33)
    assert err.message.startswith("undefined name 'doc' (a macro sees only its own "
                                  "parameters: give 'docs_causal' a parameter for it)")


# ---------------------------------------------------------------- unclosed brackets

@pytest.mark.parametrize("source, line, column, bracket", [
    ("mask c = causal & (window(3)\nmask d = sink(4)\n", 1, 19, "("),
    ("mask m =\n  causal & (window(3)\n", 2, 12, "("),
    ("mask m =\n  window(3\n", 2, 9, "("),
    ("mask m = global([0, 1\nmask n = causal\n", 1, 17, "["),
    ("mask m = heads { 0: causal, _: sink(2)\n\nlet x = 3\nmask n = causal\n", 1, 16, "{"),
    ("let w = (3\nmask m = window(w)\n", 1, 9, "("),
    ("mask m = causal & (window(3) | (sink(2)\n", 1, 32, "("),     # the innermost
])
def test_an_unclosed_bracket_is_reported_where_it_opens(source, line, column, bracket):
    with pytest.raises(maskc.MaskSyntaxError) as info:
        maskc.compile(source, name="m") if "mask m" in source else maskc.compile(source)
    err = info.value
    assert (err.line, err.column, err.message) == (line, column, f"'{bracket}' is never closed")
    assert_shown(err, source)
    assert str(check_all(source)[0]) == str(err)


def test_a_bracket_closed_later_is_not_the_mistake():
    for source, column, token in [("mask m = window(3 4)", 19, "'4'"),
                                  ("mask m = (causal & & sink(2))", 20, "'&'")]:
        with pytest.raises(maskc.MaskSyntaxError) as info:
            maskc.compile(source)
        assert (info.value.line, info.value.column) == (1, column)
        assert info.value.message.startswith(f"unexpected {token}")
    # and a cut-short expression inside an open bracket is reported as such
    with pytest.raises(maskc.MaskSyntaxError) as info:
        maskc.compile("mask m =\n  causal &\n\n  (window(2) |\n")
    assert (info.value.line, info.value.column) == (4, 15)
    assert info.value.message.startswith("unexpected end of input")


# ---------------------------------------------------------------- the command line

def test_check_prints_every_error_then_a_summary(capsys, tmp_path):
    bad = tmp_path / "bad.mask"
    bad.write_text(BAD)
    code, out, err = run(capsys, "check", bad)
    assert code == 1 and out == ""
    heads = re.findall(rf"^{re.escape(str(bad))}:(\d+):(\d+): error: ", err, flags=re.M)
    assert [(int(a), int(b)) for a, b in heads] == [(1, 10), (2, 15), (3, 19), (5, 10)]
    assert err.splitlines()[-1] == f"{bad}: 4 errors"
    assert "Traceback" not in err
    # each error as maskc.compile would print it: message, source line, caret
    assert "\n".join(str(e) for e in check_all(BAD, str(bad))) + f"\n{bad}: 4 errors\n" == err


def test_check_exit_codes_and_lines_per_file(capsys, tmp_path):
    good, one, two = tmp_path / "good.mask", tmp_path / "one.mask", tmp_path / "two.mask"
    good.write_text("mask a = causal\nmask b = window(3)\n")
    one.write_text("mask a = causal\nmask b = sink(-1)\n")
    two.write_text("mask a = window(-1)\nmask b = (causal\n")
    code, out, err = run(capsys, "check", good)
    assert (code, out, err) == (0, f"{good}: ok, 2 masks\n", "")
    code, out, err = run(capsys, "check", one, good, two)
    assert code == 1
    assert out == f"{good}: ok, 2 masks\n"
    lines = err.splitlines()
    assert f"{one}: 1 error" in lines and f"{two}: 2 errors" in lines
    assert lines.index(f"{one}: 1 error") < lines.index(f"{two}:1:17: error: the window "
                                                        "radius must be >= 0, got -1")
    assert f"{two}:2:10: error: '(' is never closed" in lines


def test_check_debug_raises_the_first_error(tmp_path):
    bad = tmp_path / "bad.mask"
    bad.write_text(BAD)
    with pytest.raises(maskc.MaskNameError) as info:
        main(["--debug", "check", str(bad)])
    assert (info.value.line, info.value.column) == (1, 10)


# ---------------------------------------------------------------- clean files stay clean

def test_clean_files_parse_as_a_whole_and_have_no_errors():
    from pathlib import Path

    from maskc.frontend.parser import parse
    from maskc.frontend.report import parse_items
    examples = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.mask"))
    assert examples
    for path in examples:
        text = path.read_text()
        assert [x for _, x in parse_items(text, str(path))] == list(parse(text, str(path)).items)
        assert check_all(text, str(path)) == [], path
    # `mask` and `let` are names where a name may stand: no item begins there
    source = "let mask = causal\nlet let = 3\nmask m(input mask) = same(mask) & window(let)\n"
    assert check_all(source) == []
    maskc.compile(source)


def test_text_before_the_first_item_and_garbage_between_items():
    source = "garbage\nmask a = window(-1)\n@\nmask b = sink(-1)\n"
    assert located(check_all(source)) == [
        (1, 1, "unexpected 'garbage'; expected 'let', 'mask', end of input"),
        (2, 17, "the window radius must be >= 0, got -1"),
        (3, 1, "unexpected character '@'"),
        (4, 15, "the number of sink tokens must be >= 0, got -1"),
    ]


def test_thousands_of_unknown_names_are_checked_in_linear_time():
    """Found by review: each unknown name was compared with every mask name of the file
    (difflib), 27 s for 4,000 masks; now one search per distinct name and scope, among the
    names nearest in length. Twice the masks may cost at most 4 times the time."""
    import time
    from maskc.frontend import check_all

    def seconds(n, distinct):
        text = "\n".join(f"mask m{i} = {'wndow' + str(i) if distinct else 'windw'}(3)"
                         for i in range(n))
        t = time.perf_counter()
        errors = check_all(text, "many.mask")
        assert len(errors) == n
        return time.perf_counter() - t, errors

    for distinct in (False, True):
        small, _ = seconds(1000, distinct)
        large, errors = seconds(2000, distinct)
        assert large < 4 * small + 0.5, (distinct, small, large)
    _, errors = seconds(300, False)
    assert "did you mean 'window'?" in str(errors[0])


def test_a_refused_character_inside_a_word_reports_only_itself():
    """Found by review: `wíndow` also gave "undefined name 'w'" (the text before the
    character was checked as a whole item); a stray character after a whole item still
    leaves that item checked."""
    from maskc.frontend import check_all
    text = "mask a = causal\nmask b = w\u00edndow(3)\nmask c = sink(2) $\nmask d = windw(2)\n"
    got = [(e.line, e.column, e.message) for e in check_all(text, "u.mask")]
    assert got == [(2, 11, "unexpected character 'í'"), (3, 18, "unexpected character '$'"),
                   (4, 10, "undefined name 'windw'; did you mean 'window'?")]


def test_a_refused_mask_is_still_a_mask_of_the_file():
    """Found by review: `let a` then `mask a` also said "the file defines no mask"."""
    from maskc.frontend import check_all
    got = [(e.line, e.message) for e in check_all("let a = causal\nmask a = a\n", "d.mask")]
    assert got == [(2, "'a' is defined twice")]
    got = [e.message for e in check_all("let a = causal\n", "d.mask")]
    assert got == ["the file defines no mask (add 'mask NAME = ...')"]


def test_an_unknown_parameter_is_reported_with_the_other_errors(tmp_path, capsys):
    """`-p w=3` where no mask declares `w` is an error beside the file's own (it used to be
    looked for only in files without any other error)."""
    from maskc.cli import main
    f = tmp_path / "b.mask"
    f.write_text("mask a = windw(2)\n")
    assert main(["check", str(f), "-p", "w=3"]) == 1
    err = capsys.readouterr().err
    assert "undefined name 'windw'" in err and "no mask in the file has a parameter 'w'" in err
    assert err.rstrip().endswith("b.mask: 2 errors")
