"""Scan objects: their points, lengths, shuffling, descriptions, and Scannable."""

import pytest

from labpipe.language.arguments import Scannable
from labpipe.language.exceptions import ArgumentError, DefaultMissing
from labpipe.language.scans import (CenterScan, ExplicitScan, MultiScanManager, NoScan,
                                    RangeScan, scan_from_description)
from labpipe.language.units import MHz
from labpipe.protocol import pyon


def test_noscan_repeats_its_value():
    scan = NoScan(1.5, repetitions=3)
    assert list(scan) == [1.5, 1.5, 1.5]
    assert len(scan) == 3
    assert len(NoScan(2)) == 1


def test_rangescan_includes_both_ends():
    scan = RangeScan(0, 1, 5)
    assert list(scan) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(scan) == 5
    assert list(RangeScan(0.1, 0.7, 7))[-1] == 0.7
    assert list(RangeScan(3, 9, 1)) == [3]
    assert list(RangeScan(3, 9, 0)) == []
    assert list(RangeScan(1, 0, 3)) == [1.0, 0.5, 0.0]


def test_scans_can_be_iterated_again_and_concurrently():
    scan = RangeScan(0, 2, 3)
    assert [(a, b) for a in scan for b in scan][:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert list(scan) == list(scan)


def test_centerscan_is_symmetric_and_ascending():
    assert list(CenterScan(10, 4, 1)) == [8, 9, 10, 11, 12]
    assert list(CenterScan(10, 3, 1)) == [9, 10, 11]
    assert list(CenterScan(5, 1, 0)) == []
    # 1.2/(2*0.2) is 2.9999999999999996 in floating point: the outer points stay.
    assert len(CenterScan(0, 1.2, 0.2)) == 7
    assert list(CenterScan(0, 4, -1)) == [-2, -1, 0, 1, 2]


def test_explicitscan_keeps_order():
    scan = ExplicitScan((3, 1, 2))
    assert list(scan) == [3, 1, 2]
    assert len(scan) == 3


@pytest.mark.parametrize("make", [
    lambda seed: RangeScan(0, 1, 20, randomize=True, seed=seed),
    lambda seed: CenterScan(0, 20, 1, randomize=True, seed=seed),
])
def test_randomize_shuffles_reproducibly_with_a_seed(make):
    a, b, c = make(42), make(42), make(7)
    assert list(a) == list(b)
    assert list(a) != list(c)
    assert sorted(a) == sorted(make(None)) == sorted(c)
    assert list(a) != sorted(a)


def test_describe_shapes_match_the_wire():
    assert NoScan(1.0, 2).describe() == {"ty": "NoScan", "value": 1.0, "repetitions": 2}
    assert RangeScan(0, 1, 3, randomize=True, seed=5).describe() == {
        "ty": "RangeScan", "start": 0, "stop": 1, "npoints": 3, "randomize": True,
        "seed": 5}
    assert CenterScan(1, 2, 0.5).describe() == {
        "ty": "CenterScan", "center": 1, "span": 2, "step": 0.5, "randomize": False,
        "seed": None}
    assert ExplicitScan((1, 2)).describe() == {"ty": "ExplicitScan", "sequence": [1, 2]}


@pytest.mark.parametrize("scan", [NoScan(1.0, 2), RangeScan(0, 1, 3, True, 5),
                                  CenterScan(1, 2, 0.5), ExplicitScan([1, 2.5])])
def test_description_round_trips(scan):
    desc = pyon.decode(pyon.encode(scan.describe()))
    again = scan_from_description(desc)
    assert type(again) is type(scan)
    assert list(again) == list(scan)


def test_scan_from_description_errors_say_what_is_expected():
    with pytest.raises(ValueError, match="unknown scan type 'LinearScan'.*RangeScan"):
        scan_from_description({"ty": "LinearScan"})
    with pytest.raises(ValueError, match="RangeScan needs 'npoints'"):
        scan_from_description({"ty": "RangeScan", "start": 0, "stop": 1})
    with pytest.raises(ValueError, match="npoints must be an integer"):
        scan_from_description({"ty": "RangeScan", "start": 0, "stop": 1, "npoints": 2.5})
    # Keys a scan type does not take are ignored, as a dashboard may send them.
    scan = scan_from_description({"ty": "NoScan", "value": 3, "extra": 1})
    assert list(scan) == [3]


def test_multiscanmanager_iterates_over_the_product():
    points = list(MultiScanManager(("a", ExplicitScan([1, 2])), ("b", NoScan(0, 2))))
    assert [(p.a, p.b) for p in points] == [(1, 0), (1, 0), (2, 0), (2, 0)]
    assert len(MultiScanManager(("a", RangeScan(0, 1, 3)), ("b", NoScan(0, 2)))) == 6


def test_scannable_default_and_describe():
    proc = Scannable([RangeScan(1*MHz, 2*MHz, 3), NoScan(1.5*MHz)], unit="MHz",
                     global_min=0, global_max=10*MHz)
    assert list(proc.default()) == [1e6, 1.5e6, 2e6]
    assert proc.describe() == {
        "ty": "Scannable",
        "default": [{"ty": "RangeScan", "start": 1e6, "stop": 2e6, "npoints": 3,
                     "randomize": False, "seed": None},
                    {"ty": "NoScan", "value": 1.5e6, "repetitions": 1}],
        "unit": "MHz", "scale": 1e6, "global_step": 1e5, "global_min": 0,
        "global_max": 1e7, "precision": 2}
    assert "default" not in Scannable().describe()
    with pytest.raises(DefaultMissing):
        Scannable().default()


def test_scannable_process_takes_descriptions_and_lists():
    proc = Scannable(NoScan(0))
    scan = proc.process({"ty": "CenterScan", "center": 0, "span": 2, "step": 1})
    assert list(scan) == [-1, 0, 1]
    selected_first = proc.process([{"ty": "ExplicitScan", "sequence": [4, 5]},
                                   {"ty": "NoScan", "value": 1}])
    assert list(selected_first) == [4, 5]
    with pytest.raises(ArgumentError, match="empty list"):
        proc.process([])
    with pytest.raises(ArgumentError, match="unknown scan type"):
        proc.process({"ty": "Bogus"})


def test_scannable_honours_the_global_range():
    proc = Scannable(RangeScan(0, 1, 2), global_min=0, global_max=1)
    assert list(proc.process({"ty": "NoScan", "value": 1})) == [1]
    with pytest.raises(ArgumentError, match="1.5 is above the global maximum 1"):
        proc.process({"ty": "RangeScan", "start": 0, "stop": 1.5, "npoints": 4})
    with pytest.raises(ArgumentError, match="-1 is below the global minimum 0"):
        proc.process({"ty": "ExplicitScan", "sequence": [0, -1]})
    with pytest.raises(ArgumentError, match="invalid default"):
        Scannable(NoScan(5), global_max=1)
