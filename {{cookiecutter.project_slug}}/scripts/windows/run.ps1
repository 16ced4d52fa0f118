<#
.SYNOPSIS
Start the service through the launcher, so that Ctrl-C stops it gracefully (CTRL_BREAK_EVENT).
.DESCRIPTION
PowerShell takes a bare -- for itself: quote it, as '--'.
Usage: scripts\windows\run.ps1 [--grace SECONDS] [--run-dir DIR] [-- arguments for python -m app]
Runs from the project folder with $env:PYTHON if set, else .venv\Scripts\python.exe, else python.
The exit status is the launcher's: the service's own (0 = clean stop), 137 if it had to be killed.
#>
$ErrorActionPreference = 'Stop'
$root = Split-Path -Parent (Split-Path -Parent $PSScriptRoot)
$python = 'python'
$venvPython = Join-Path $root '.venv\Scripts\python.exe'
if (Test-Path $venvPython) { $python = $venvPython }
if ($env:PYTHON) { $python = $env:PYTHON }
Push-Location $root
try {
    & $python -m app.runtime.launcher run @args
    $status = $LASTEXITCODE
}
finally {
    Pop-Location
}
exit $status
