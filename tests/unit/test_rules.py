from decimal import Decimal

import pytest

from spark_detector.engine.rules import Thresholds, thresholds_from_env


def test_thresholds_default_to_the_spec():
    assert thresholds_from_env({}) == Thresholds(50_000, 0.90, 0.10, 80, Decimal(23), 100)


def test_thresholds_are_overridden_from_the_environment():
    env = {"PATID1_MIN_TOTAL": "10", "PATID2_MAX_AVG_AMOUNT": "23.5", "PATID3_MIN_FEMALE": "",
           "PATID1_WEIGHT_PERCENTILE": "0.25"}
    assert thresholds_from_env(env) == Thresholds(
        upgrade_min_total=10, upgrade_weight_percentile=0.25, child_max_avg_amount=Decimal("23.5")
    )


def test_a_malformed_threshold_names_the_variable():
    with pytest.raises(ValueError, match="PATID2_MIN_COUNT"):
        thresholds_from_env({"PATID2_MIN_COUNT": "eighty"})
