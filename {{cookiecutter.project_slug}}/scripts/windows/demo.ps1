<#
.SYNOPSIS
Start the service, echo a line, stop it gracefully, report the exit status and stop time.
.DESCRIPTION
Usage: scripts\windows\demo.ps1
Runs from the project folder with $env:PYTHON if set, else .venv\Scripts\python.exe, else python.
The exit status is the launcher's: 0 when the echo, the graceful stop and the journal all worked.
#>
$ErrorActionPreference = 'Stop'
$root = Split-Path -Parent (Split-Path -Parent $PSScriptRoot)
$python = 'python'
$venvPython = Join-Path $root '.venv\Scripts\python.exe'
if (Test-Path $venvPython) { $python = $venvPython }
if ($env:PYTHON) { $python = $env:PYTHON }
Push-Location $root
try {
    & $python -m app.runtime.launcher demo @args
    $status = $LASTEXITCODE
}
finally {
    Pop-Location
}
exit $status
