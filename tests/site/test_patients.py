"""Patient ids for any site: a table beside the films, a --patient-pattern, the names pneumo-edge knows."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_edge.edge.errors import DataError
from pneumo_edge.edge.patients import PatientSource, SiteTable, patient_id
from pneumo_edge.site.validate import resampling_groups


def films(root, names):
    out = []
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(p)
        out.append(str(p))
    return out


@pytest.mark.parametrize("name,pid", [("nih_patient00001280_fu004.png", "NIH00001280"),
                                      ("NIH_PATIENT00000007_FU000.PNG", "NIH00000007"),
                                      ("person3_virus_7.jpeg", "PERSON3"), ("nih_00001280.png", None)])
def test_known_names(name, pid):
    assert patient_id(name) == pid


def test_patients_csv_names_films_by_path_or_bare_name(tmp_path):
    paths = films(tmp_path, ["NORMAL/a.png", "PNEUMONIA/b.png", "PNEUMONIA/c.png", "NORMAL/person9_x.png"])
    (tmp_path / "patients.csv").write_text("file,patient\nNORMAL/a.png,P1\nb.png,P1\n./PNEUMONIA/c.png,P2\n")
    src = PatientSource.for_folder(tmp_path)
    assert [src.patient(p) for p in paths] == ["P1", "P1", "P2", "PERSON9"]  # unlisted: the file name's id
    groups, how = resampling_groups(paths, src)
    assert groups.tolist() == ["P1", "P1", "P2", "PERSON9"]
    assert how["unit"] == "patient" and how["n_groups"] == 3 and how["patient_ids_from"].startswith("patients.csv")


def test_metadata_csv_with_a_site_patient_column_and_other_columns(tmp_path):
    paths = films(tmp_path, ["NORMAL/1.png", "PNEUMONIA/2.png"])
    (tmp_path / "metadata.csv").write_text("file,label,nih_patient_id,view_position\nNORMAL/1.png,NORMAL,0042,PA\n"
                                           "PNEUMONIA/2.png,PNEUMONIA,0042,AP\n")
    src = PatientSource.for_folder(tmp_path)
    assert src.patient(paths[0]) == src.patient(paths[1]) == "0042"
    assert [src.table.value(p, ("view_position",)) for p in paths] == ["PA", "AP"]


def test_pattern_when_no_table_names_the_film(tmp_path):
    paths = films(tmp_path, ["NORMAL/ward3-0017-a.png", "NORMAL/ward3-0017-b.png", "NORMAL/other.png"])
    src = PatientSource.for_folder(tmp_path, r"ward3-(?P<patient>\d+)-")
    assert [src.patient(p) for p in paths] == ["0017", "0017", None]
    assert PatientSource.for_folder(tmp_path, r"-\d+-").patient(paths[0]) == "-0017-"  # no group: the match
    groups, how = resampling_groups(paths, src)
    assert how["unit"] == "patient where named, else image" and len(set(groups.tolist())) == 2


@pytest.mark.parametrize("text,why", [("name,who\na.png,1\n", "needs a file column"),
                                      ("file,patient\na.png,1\na.png,2\n", "two different patients"),
                                      ("file,patient\na.png,\n", "empty")])
def test_bad_tables_and_patterns_are_one_line_errors(tmp_path, text, why):
    (tmp_path / "patients.csv").write_text(text)
    with pytest.raises(DataError, match=why):
        SiteTable.beside(tmp_path)
    with pytest.raises(DataError, match="not a regular expression"):
        PatientSource.for_folder(None, "(unclosed")


def test_validate_and_calibrate_take_a_patient_pattern(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from conftest import write_xrays
    from pneumo_edge.cli import main

    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "site" / label).mkdir(parents=True)
        for i, p in enumerate(write_xrays(tmp_path / "site" / label, 4, seed=label == "NORMAL")):
            Path(p).rename(tmp_path / "site" / label / f"ward-{label[0]}{i // 2}-{i}.png")
    r = CliRunner().invoke(main, ["validate", str(tmp_path / "site"), "--model", str(tiny_bundle), "--out",
                                  str(tmp_path / "v"), "--bootstrap", "20", "--patient-pattern", r"ward-(\w+?)-", "-q"])
    assert r.exit_code == 0 and "the 4 patients named in --patient-pattern" in r.output, r.output
    bad = CliRunner().invoke(main, ["calibrate", str(tmp_path / "site"), "--model", str(tiny_bundle), "--out",
                                    str(tmp_path / "c"), "--patient-pattern", "(", "-q"])
    assert bad.exit_code == 2 and "not a regular expression" in bad.output and not (tmp_path / "c").exists()
