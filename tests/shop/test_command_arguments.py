"""Bad option values of ``train_bundles``, ``simulate_shoppers``, ``import_orders``, ``demo`` and ``demo_approve`` are refused by argparse:
one line naming the option and the reason, exit status 2, no traceback, before anything is read or written."""
from datetime import date

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError

REFUSED = [
    ("train_bundles", ["--split-date", "2017-02-30"],
     "argument --split-date: '2017-02-30' is not a date (day is out of range for month)"),
    ("train_bundles", ["--split-date", "tomorrow"], "argument --split-date: must be a date YYYY-MM-DD, not 'tomorrow'"),
    ("train_bundles", ["--max-queries", "0"], "argument --max-queries: must be at least 1, not 0"),
    ("simulate_shoppers", ["--workers", "0"], "argument --workers: must be at least 1, not 0"),
    ("simulate_shoppers", ["--limit", "-1"], "argument --limit: must be at least 1, not -1"),
    ("simulate_shoppers", ["--limit", "0"], "argument --limit: must be at least 1, not 0"),
    ("simulate_shoppers", ["--seed", "-1"], "argument --seed: must be at least 0, not -1"),
    ("simulate_shoppers", ["--workers", "two"], "argument --workers: must be a whole number, not 'two'"),
    ("simulate_shoppers", ["--stop-after", "0"], "argument --stop-after: must be a number of minutes above 0, not '0'"),
    ("simulate_shoppers", ["--stop-after", "nan"],
     "argument --stop-after: must be a number of minutes above 0, not 'nan'"),
    ("simulate_shoppers", ["--from", "2017-13-01"],
     "argument --from: '2017-13-01' is not a date (month must be in 1..12)"),
    ("simulate_shoppers", ["--to", "31/12/2017"], "argument --to: must be a date YYYY-MM-DD, not '31/12/2017'"),
    ("import_orders", ["--preset", "completejourney", "--weeks", "0"], "argument --weeks: must be at least 1, not 0"),
    ("import_orders", ["--csv", "x.csv", "--stock", "-5"], "argument --stock: must be at least 0, not -5"),
    ("demo", ["--approve", "0"], "argument --approve: must be at least 1, not 0"),
    ("demo", ["--households", "-3"], "argument --households: must be at least 1, not -3"),
    ("demo_approve", ["--top", "-1"], "argument --top: must be at least 1, not -1"),
    ("demo_approve", ["--top", "0"], "argument --top: must be at least 1, not 0"),
    ("demo_approve", ["--offers-per-product", "0"], "argument --offers-per-product: must be at least 1, not 0"),
]


@pytest.mark.parametrize("command, argv, message", REFUSED)
def test_bad_option_values_are_one_argparse_line_from_the_command_line(command, argv, message, capsys):
    """QA: ``--split-date 2017-02-30`` printed a traceback around the message (a CommandError raised inside an
    argparse type); ``--workers 0`` a ValueError traceback; ``--limit -1`` replayed everything; ``demo_approve
    --top -1`` approved nothing. No database access: refused while the arguments are parsed."""
    with pytest.raises(SystemExit) as exited:
        load_command_class("shop_bundles", command).run_from_argv(["manage.py", command, *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"manage.py {command}: error: {message}"
    assert "Traceback" not in err


@pytest.mark.parametrize("command, argv, message", REFUSED)
def test_bad_option_values_raise_command_error_from_call_command(command, argv, message):
    with pytest.raises(CommandError) as refused:
        call_command(command, *argv)
    assert str(refused.value) == f"Error: {message}"


def test_shoppers_simulate_refuses_a_limit_or_seed_below_its_range_before_reading_anything():
    """The service checks its arguments too (the command's are refused earlier, by argparse)."""
    from shop_bundles.services.simulation import shoppers_simulate

    window = {"date_from": date(2017, 10, 30), "date_to": date(2017, 12, 31), "responses": {}}
    for kwargs, message in (({"limit": 0}, "limit must be >= 1 (None = every household), got 0"),
                            ({"limit": -1}, "limit must be >= 1 (None = every household), got -1"),
                            ({"seed": -1}, "seed must be >= 0, got -1"),
                            ({"stop_after": -5.0}, "stop_after must be >= 0 seconds, got -5.0"),
                            ({"workers": 0}, "workers must be >= 1, got 0")):
        with pytest.raises(ValueError) as refused:
            shoppers_simulate(**window, **kwargs)
        assert str(refused.value) == message
