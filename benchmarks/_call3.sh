cd "$(dirname "$0")" 2>/dev/null || true
o=$OUT
( timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_mm.py > $o/tests.log 2>&1; echo "tests exit $?" >> $o/tests.log )
tail -3 $o/tests.log
( timeout 330 python3 benchmarks/decode.py --shape 34b --variants skinny,skinny_fp8 --streams 1cfg,8cfg --prefill 256 --out $o/decode_34b_gluon.json > $o/decode.log 2>&1; echo "decode exit $?" >> $o/decode.log )
tail -25 $o/decode.log
