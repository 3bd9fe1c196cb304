"""The one check of a CLI usage error, shared by the command-line tests."""
import pytest

from captum_global.cli import main


def usage_error(argv, capsys):
    """Run ``main(argv)``; assert exit status 2 with the usage line and an error line, no traceback; return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith("usage: captum-global") and "error: " in err and "Traceback" not in err
    return err
