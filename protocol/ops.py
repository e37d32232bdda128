"""Worker opcodes (libstore/worker-protocol.hh), by Nix's own names."""

from __future__ import annotations

import enum


class Op(enum.IntEnum):
    IsValidPath = 1
    HasSubstitutes = 3
    QueryPathHash = 4  # obsolete
    QueryReferences = 5  # obsolete
    QueryReferrers = 6
    AddToStore = 7
    AddTextToStore = 8  # obsolete since 1.25
    BuildPaths = 9
    EnsurePath = 10
    AddTempRoot = 11
    AddIndirectRoot = 12
    SyncWithGC = 13
    FindRoots = 14
    ExportPath = 16  # obsolete
    QueryDeriver = 18  # obsolete
    SetOptions = 19
    CollectGarbage = 20
    QuerySubstitutablePathInfo = 21
    QueryDerivationOutputs = 22  # obsolete
    QueryAllValidPaths = 23
    QueryFailedPaths = 24
    ClearFailedPaths = 25
    QueryPathInfo = 26
    ImportPaths = 27  # obsolete
    QueryDerivationOutputNames = 28  # obsolete
    QueryPathFromHashPart = 29
    QuerySubstitutablePathInfos = 30
    QueryValidPaths = 31
    QuerySubstitutablePaths = 32
    QueryValidDerivers = 33
    OptimiseStore = 34
    VerifyStore = 35
    BuildDerivation = 36
    AddSignatures = 37
    NarFromPath = 38
    AddToStoreNar = 39
    QueryMissing = 40
    QueryDerivationOutputMap = 41
    RegisterDrvOutput = 42
    QueryRealisation = 43
    AddMultipleToStore = 44
    AddBuildLog = 45
    BuildPathsWithResults = 46
