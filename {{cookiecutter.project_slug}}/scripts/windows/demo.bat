@echo off
rem Start the service, echo a line, stop it gracefully, report the exit status and stop time.
rem Usage: scripts\windows\demo.bat
rem Runs from the project folder with PYTHON if set, else .venv\Scripts\python.exe, else python.
rem The exit status is the launcher's: 0 when the echo, the graceful stop and the journal all worked.
setlocal
pushd "%~dp0..\.."
if not exist "app\launcher.py" (
    echo error: cannot find app\launcher.py next to scripts\windows 1>&2
    popd
    exit /b 1
)
set "PY=python"
if exist ".venv\Scripts\python.exe" set "PY=.venv\Scripts\python.exe"
if defined PYTHON set "PY=%PYTHON%"
"%PY%" -m app.runtime.launcher demo %*
set "STATUS=%ERRORLEVEL%"
popd
exit /b %STATUS%
