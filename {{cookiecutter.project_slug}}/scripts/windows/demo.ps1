<#
.SYNOPSIS
Start the service, send it a request, stop it gracefully, report the exit status and stop time.
.DESCRIPTION
Usage: scripts\windows\demo.ps1
Runs from the project folder with $env:PYTHON if set, else .venv\Scripts\python.exe, else python.
The exit status is 0 when the request was answered, the graceful stop worked and the journal holds it.
#>
. (Join-Path $PSScriptRoot '_common.ps1') scripts\launcher_demo.py @args
exit $status
