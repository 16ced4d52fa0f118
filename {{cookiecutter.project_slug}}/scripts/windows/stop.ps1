<#
.SYNOPSIS
Stop the service started by run.bat or run.ps1 from this folder, gracefully.
.DESCRIPTION
Usage: scripts\windows\stop.ps1 [--run-dir DIR]
Runs from the project folder with $env:PYTHON if set, else .venv\Scripts\python.exe, else python.
The exit status is the launcher's: the service's exit status (0 = clean stop), 1 if nothing was running.
#>
. (Join-Path $PSScriptRoot '_common.ps1') -m servicekit.launcher stop @args
exit $status
