# Top SASS instructions by warp-stall samples from `ncu --page source --csv --print-source sass`.
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr_i = next(i for i, r in enumerate(rows) if any("Warp Stall Sampling (All Samples)" in c for c in r))
hdr = rows[hdr_i]
col = next(i for i, c in enumerate(hdr) if c.startswith("Warp Stall Sampling (All Samples)"))
src = next(i for i, c in enumerate(hdr) if c.strip() in ("Source", "# Source"))
data = []
for r in rows[hdr_i + 1:]:
    try: data.append((float(r[col].replace(",", "")), r))
    except (ValueError, IndexError): pass
tot = sum(d[0] for d in data) or 1
stall_cols = [i for i, c in enumerate(hdr) if c.startswith("stall_") or "Stall" in c]
print(f"total samples {tot:.0f}; columns: {[hdr[i] for i in stall_cols][:40]}")
for v, r in sorted(data, key=lambda x: -x[0])[:40]:
    print(f"{100*v/tot:5.1f}%  {r[0]:>6} {r[src][:90]}")
