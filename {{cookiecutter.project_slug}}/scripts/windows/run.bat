@echo off
rem Start the service through the launcher, so that Ctrl-C stops it gracefully (CTRL_BREAK_EVENT).
rem Usage: scripts\windows\run.bat [--grace SECONDS] [--run-dir DIR] [-- arguments for python -m app]
rem Runs from the project folder with PYTHON if set, else .venv\Scripts\python.exe, else python.
rem The exit status is the launcher's: the service's own (0 = clean stop), 137 if it had to be killed.
setlocal
pushd "%~dp0..\.."
if not exist "servicekit\launcher.py" (
    echo error: cannot find servicekit\launcher.py two folders above scripts\windows 1>&2
    popd
    exit /b 1
)
set "PY=python"
if exist ".venv\Scripts\python.exe" set "PY=.venv\Scripts\python.exe"
if defined PYTHON set "PY=%PYTHON%"
"%PY%" -m servicekit.launcher run %*
set "STATUS=%ERRORLEVEL%"
popd
exit /b %STATUS%
