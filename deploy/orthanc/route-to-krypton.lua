-- Send each instance Orthanc stores to Krypton's STOW-RS route, in the background
-- (an Orthanc job: GET /jobs shows it). Krypton's own results are not sent back:
-- they say Manufacturer "Krypton" (Krypton would acknowledge and skip them anyway).
function OnStoredInstance(instanceId, tags, metadata, origin)
  if tags["Manufacturer"] ~= "Krypton" then
    RestApiPost('/dicom-web/servers/krypton/stow',
                '{"Resources": ["' .. instanceId .. '"], "Synchronous": false}')
  end
end
