@echo off
rem Stop the service started by run.bat or run.ps1 from this folder, gracefully.
rem Usage: scripts\windows\stop.bat [--run-dir DIR]
rem Runs from the project folder with PYTHON if set, else .venv\Scripts\python.exe, else python.
rem The exit status is the launcher's: the service's exit status (0 = clean stop), 1 if nothing was running.
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
"%PY%" -m servicekit.launcher stop %*
set "STATUS=%ERRORLEVEL%"
popd
exit /b %STATUS%
