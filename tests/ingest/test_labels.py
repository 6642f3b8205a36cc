"""Gene panel selection and normalisation, against hand computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from asign.errors import ConfigError, InputError
from asign.ingest.labels import (
    NORMALISATIONS,
    normalise,
    panel_counts,
    select_panel,
)
from asign.ingest.sample import SectionInput


def _section(sid: str, genes: list[str], counts: list[list[int]]) -> SectionInput:
    m = np.asarray(counts, dtype=np.int32)
    ids = [f"{sid}/s{i}" for i in range(m.shape[0])]
    spots = pd.DataFrame(
        {"spot_id": ids, "barcode": ids, "array_x": 0, "array_y": 0, "px": 0.0, "py": 0.0}
    )
    return SectionInput(
        sample_id="S",
        section_id=sid,
        z=int(sid[1:]),
        image_path=None,
        um_per_px=1.0,
        spot_diameter_um=55.0,
        spot_pitch_um=100.0,
        spots=spots,
        genes=tuple(genes),
        counts=sp.csr_matrix(m),
        counts_path=Path(f"/data/{sid}.csv"),
        total_counts=m.sum(axis=1).astype(np.int64) + 10,  # other genes outside the table
    )


@pytest.fixture
def sections():
    # Pooled means over L1+L2 (4 spots): A=2.5, B=2.5, C=1.0, D=9 but only in L1, E=0.
    l1 = _section("L1", ["A", "B", "C", "D", "E"], [[1, 4, 1, 9, 0], [3, 2, 1, 9, 0]])
    l2 = _section("L2", ["E", "C", "B", "A"], [[0, 1, 2, 3], [0, 1, 2, 3]])
    hidden = _section("L3", ["A", "B", "C", "E"], [[0, 0, 0, 100], [0, 0, 0, 100]])
    return [l1, l2, hidden]


def test_panel_ranks_by_pooled_mean_with_name_tie_break(sections):
    assert select_panel(sections, 3, train_sections={"L1", "L2"}) == ["A", "B", "C"]
    # D is absent from L2 so it is not a candidate; n larger than available returns all.
    assert select_panel(sections, 10, train_sections={"L1", "L2"}) == ["A", "B", "C", "E"]


def test_panel_ignores_hidden_sections(sections):
    before = select_panel(sections, 2, train_sections=["L1", "L2"])
    l3 = sections[2]
    boosted = _section("L3", list(l3.genes), [[0, 0, 50, 1000], [0, 0, 50, 1000]])
    after = select_panel([*sections[:2], boosted], 2, train_sections=["L1", "L2"])
    assert before == after == ["A", "B"]
    # ...while training on L3 does change it.
    assert select_panel([*sections[:2], boosted], 2, train_sections=["L3"]) == ["E", "C"]


def test_single_training_section_can_use_its_own_genes(sections):
    assert select_panel(sections, 1, train_sections=["L1"]) == ["D"]


def test_training_section_errors(sections):
    with pytest.raises(InputError, match="L9"):
        select_panel(sections, 3, train_sections=["L9"])
    with pytest.raises(ConfigError):
        select_panel(sections, 0, train_sections=["L1"])


def test_requested_genes_absent_name_gene_and_file(sections):
    assert select_panel(sections, train_sections=["L1", "L2"], genes=["C", "A", "C"]) == ["C", "A"]
    with pytest.raises(InputError) as err:
        select_panel(sections, train_sections=["L1", "L2"], genes=["A", "D"])
    msg = str(err.value)
    assert "gene(s) D absent" in msg and "L2.csv" in msg and "\n" not in msg
    with pytest.raises(InputError, match=r"L1\.csv.*XYZ, QQ absent"):
        select_panel(sections, train_sections=["L1", "L2"], genes=["XYZ", "A", "QQ"])


def test_panel_counts_reorders_and_zero_fills(sections):
    out = panel_counts(sections[1], ["A", "D", "C"])
    np.testing.assert_array_equal(out, [[3, 0, 1], [3, 0, 1]])
    assert out.dtype == np.int64


def test_log_ratio_by_hand():
    c = np.array([[0, 1, 3], [2, 2, 2]])
    got = normalise(c, None, "log_ratio")
    want = np.array(
        [
            [np.log(1 / 7), np.log(2 / 7), np.log(4 / 7)],
            [np.log(3 / 9)] * 3,
        ]
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.dtype == np.float32


def test_log1p_cp10k_by_hand():
    c = np.array([[0, 1, 3], [0, 0, 0]])
    total = np.array([20, 0])
    got = normalise(c, total, "log1p_cp10k")
    want = np.array([[0.0, np.log1p(500.0), np.log1p(1500.0)], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_normalisation_registry():
    assert set(NORMALISATIONS) == {"log_ratio", "log1p_cp10k"}
    with pytest.raises(ConfigError, match="log_ratio"):
        normalise(np.zeros((1, 1)), None, "zscore")
