<#
.SYNOPSIS
Start the service through the launcher, so that Ctrl-C stops it gracefully (CTRL_BREAK_EVENT).
.DESCRIPTION
PowerShell takes a bare -- for itself: quote it, as '--'.
Usage: scripts\windows\run.ps1 [--grace SECONDS] [--run-dir DIR] [-- arguments for python -m app]
Runs from the project folder with $env:PYTHON if set, else .venv\Scripts\python.exe, else python.
The exit status is the launcher's: the service's own (0 = clean stop), 137 if it had to be killed.
#>
. (Join-Path $PSScriptRoot '_common.ps1') -m servicekit.launcher run @args
exit $status
