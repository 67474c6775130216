"""docs/ASYNCIO.md stays true: its examples run and print what it says."""
import pytest

from conftest import doc_blocks, require_loop, run_python_block

pytestmark = pytest.mark.timeout(60)


def test_asyncio_guide_examples_run():
    require_loop()
    blocks = doc_blocks("ASYNCIO.md")
    assert len(blocks) == 2
    expected = ["b'hello'\nEventLoop", "b'ping'"]
    for code, want in zip(blocks, expected):
        proc = run_python_block(code)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == want
        assert "Traceback" not in proc.stderr, proc.stderr
