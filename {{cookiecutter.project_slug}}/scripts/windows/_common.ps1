<#
.SYNOPSIS
Shared by run.ps1, stop.ps1 and demo.ps1: run Python from the project folder, keep its status.
.DESCRIPTION
Dot-source it with the arguments for Python:  . (Join-Path $PSScriptRoot '_common.ps1') ARGS
It picks $env:PYTHON if set, else .venv\Scripts\python.exe, else python; runs it from the
project folder (two levels above this file, wherever it is started from: a double-click, a
service wrapper or another folder); and leaves Python's exit status in $status.
#>
$ErrorActionPreference = 'Stop'
$root = Split-Path -Parent (Split-Path -Parent $PSScriptRoot)
$python = 'python'
$venvPython = Join-Path $root '.venv\Scripts\python.exe'
if (Test-Path $venvPython) { $python = $venvPython }
if ($env:PYTHON) { $python = $env:PYTHON }
Push-Location $root
try {
    & $python @args
    $status = $LASTEXITCODE
}
finally {
    Pop-Location
}
