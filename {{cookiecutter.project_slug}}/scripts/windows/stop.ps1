<#
.SYNOPSIS
Stop the service started by run.bat or run.ps1 from this folder, gracefully.
.DESCRIPTION
Usage: scripts\windows\stop.ps1 [--run-dir DIR]
Runs from the project folder with $env:PYTHON if set, else .venv\Scripts\python.exe, else python.
The exit status is the launcher's: the service's exit status (0 = clean stop), 1 if nothing was running.
#>
$ErrorActionPreference = 'Stop'
$root = Split-Path -Parent (Split-Path -Parent $PSScriptRoot)
$python = 'python'
$venvPython = Join-Path $root '.venv\Scripts\python.exe'
if (Test-Path $venvPython) { $python = $venvPython }
if ($env:PYTHON) { $python = $env:PYTHON }
Push-Location $root
try {
    & $python -m app.runtime.launcher stop @args
    $status = $LASTEXITCODE
}
finally {
    Pop-Location
}
exit $status
