@echo off
rem Start the service, send it a request, stop it gracefully, report the exit status and stop time.
rem Usage: scripts\windows\demo.bat
rem Runs from the project folder with PYTHON if set, else .venv\Scripts\python.exe, else python.
rem The exit status is 0 when the request was answered, the graceful stop worked and the journal holds it.
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
"%PY%" scripts\launcher_demo.py %*
set "STATUS=%ERRORLEVEL%"
popd
exit /b %STATUS%
