"""Core pinning of service processes (the local stack's CPU preset)."""

import os
import subprocess
import sys

import pytest

from services.common.runtime import cpu_list


def test_cpu_lists():
    assert cpu_list("", [0, 1]) is None
    assert cpu_list("first-half", [0, 1, 2, 3]) == [0, 1]
    assert cpu_list("second-half", [0, 1, 2]) == [1, 2]
    assert cpu_list("second-half", [3]) is None  # one core: nothing to split
    assert cpu_list("0,2-3", [0, 1, 2, 3]) == [0, 2, 3]


@pytest.mark.parametrize("spec", ["zero", "1-x", "0,,1"])
def test_bad_cpu_settings_are_refused_clearly(spec):
    with pytest.raises(SystemExit, match="bad cpus setting"):
        cpu_list(spec, [0, 1])


def test_cores_the_process_may_not_use_are_refused():
    with pytest.raises(SystemExit, match=r"cannot use: \[5\]"):
        cpu_list("1,5", [0, 1])


def test_pinning_applies_to_the_process_and_its_children():
    first = min(os.sched_getaffinity(0))
    code = ("import os, subprocess, sys\n"
            "from services.common.runtime import pin_cpus\n"
            f"pin_cpus('{first}')\n"
            "child = subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'],"
            " capture_output=True, text=True).stdout.strip()\n"
            "print(sorted(os.sched_getaffinity(0)), child, os.environ['VLLM_CPU_OMP_THREADS_BIND'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [f"[{first}]", f"[{first}]", str(first)]
